fn main() {
    std::process::exit(lethe::cli::main());
}
