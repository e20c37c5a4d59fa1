fn main() {
    std::process::exit(lethe::entry::main());
}
