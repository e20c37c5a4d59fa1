#!/usr/bin/env python3
"""Renders Lethe's emails the way a person sees them and reports measurable
facts about each one as JSON, for the mail tests to assert on.

usage: render.py --out OUTDIR [--colors c0392b,d35400,...] [--chromium PATH]
                 FILE.eml [FILE.eml ...]

Why: a DPO reads these reports in Gmail, Outlook or Apple Mail, not in a
browser. Mail clients drop inline SVG, scripts, forms and embedded objects,
strip <style> blocks (styles must be inline), do not fetch remote images or
stylesheets by default, and show the body in a column about 600 px wide. A
template that looks fine in a browser can arrive as an empty chart, a broken
image icon or a table the reader must scroll sideways. This script checks for
exactly those things:

  * structure (Python's email package): subject, from, to, Date and
    Message-ID present, the MIME tree, a text/plain and a text/html
    alternative, the attachments (name, type, size) and the inline cid: parts;
  * html_problems: <svg>, <script>, <link>, <iframe>, <object>, <embed>,
    <form>, <style> blocks; any resource fetched from the network (src=,
    background=, <link href>, CSS url() on http://, https:// or //); an <img>
    whose src is not cid: or data:; a cid: no part of the message carries.
    A clickable <a href="https://..."> (a presigned download link) is fine;
  * rendering (headless Chromium, 600 px wide viewport, network blocked like
    a mail client's remote-content blocking): the page's scroll width and
    height, how many <img> there are and how many are broken, the right edge
    of the widest element, fits_600; a full-page PNG screenshot;
  * pixels (Pillow, only with --colors): the solid rectangles ("bars") of each
    given colour in the screenshot, e.g. the table-cell bars of a chart.

Written to OUTDIR for each message NAME (the .eml's stem): NAME.html (the HTML
part, cid: references pointing at the parts extracted to NAME.files/) and
NAME.png. Prints {"messages": [...]} on stdout. Exits 0 when it ran, whatever
it found (the caller asserts); exits 2 with a message on stderr when it could
not run (Chromium missing or failing, an unreadable or unparseable file).
"""
import argparse
import csv
import email
import email.errors
import email.policy
import html
import html.parser
import io
import json
import mimetypes
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

VIEWPORT_WIDTH = 600
MAX_SCREENSHOT_HEIGHT = 6000
CHROMIUM_TIMEOUT_S = 60
COLOR_TOLERANCE = 2  # per channel
BAR_MIN_RUN = 2  # px, a horizontal run of one colour
BAR_MIN_HEIGHT = 6  # px, a rectangle reported as a bar

FORBIDDEN_TAGS = {
    "svg": "mail clients (Gmail, Outlook) drop inline SVG",
    "script": "mail clients never run scripts",
    "link": "mail clients do not load linked stylesheets",
    "iframe": "mail clients do not show frames",
    "object": "mail clients do not show embedded objects",
    "embed": "mail clients do not show embedded objects",
    "form": "mail clients disable or strip forms",
    "style": "mail clients strip <style> blocks; styles must be inline",
}
# Attributes whose value is fetched when the element is shown (not <a href>:
# a link is only followed when clicked).
RESOURCE_ATTRS = ("src", "background", "poster", "data", "srcset")
CSS_URL = re.compile(r"""url\(\s*(['"]?)(.*?)\1\s*\)""", re.I | re.S)
CSS_IMPORT = re.compile(r"""@import\s+(['"])(.*?)\1""", re.I)
CID_REF = re.compile(r"""cid:([^\s"'()<>]+)""", re.I)


class Fatal(Exception):
    """The checker could not run at all."""


def is_remote(url):
    u = url.strip().lower()
    return u.startswith(("http://", "https://", "//"))


# ---------------------------------------------------------------- structure


def address_list(msg, name):
    header = msg[name]
    if header is None:
        return []
    return [str(a) for a in header.addresses]


def walk_tree(part, under_alternative=False, out=None):
    """Depth-first (content type, part, has a multipart/alternative ancestor)."""
    out = [] if out is None else out
    out.append((part.get_content_type(), part, under_alternative))
    if part.is_multipart():
        alt = under_alternative or part.get_content_type() == "multipart/alternative"
        for sub in part.iter_parts():
            walk_tree(sub, alt, out)
    return out


def payload_bytes(part):
    data = part.get_payload(decode=True)
    return data if data is not None else b""


def content_id(part):
    cid = part.get("Content-ID")
    if cid is None:
        return None
    return str(cid).strip().strip("<>").strip()


def csv_facts(data):
    """A CSV attachment as the csv module (RFC 4180) reads it."""
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    header, body = (rows[0], rows[1:]) if rows else ([], [])
    return {
        "header": header,
        "rows": len(body),
        "ragged_rows": sum(1 for r in body if len(r) != len(header)),
        "cells_with_at": sum(1 for r in rows for c in r if "@" in c),
    }


def structure(msg):
    tree = walk_tree(msg)
    leaves = [(t, p, alt) for t, p, alt in tree if not p.is_multipart()]
    attachments = [
        {
            "filename": p.get_filename(),
            "content_type": t,
            "size": len(payload_bytes(p)),
        }
        for t, p, _ in leaves
        if p.get_content_disposition() == "attachment"
    ]
    inline = [
        {
            "content_id": content_id(p),
            "content_type": t,
            "filename": p.get_filename(),
            "size": len(payload_bytes(p)),
        }
        for t, p, _ in leaves
        if content_id(p) is not None
    ]
    for a, (t, p, _) in zip(attachments, [x for x in leaves if x[1].get_content_disposition() == "attachment"]):
        if t == "text/csv":
            a["csv"] = csv_facts(payload_bytes(p))
    body = lambda t, p, alt: alt and p.get_content_disposition() != "attachment"
    texts = [p.get_content() for t, p, a in leaves if t == "text/plain" and body(t, p, a)]
    defects = [f"{t}: {type(d).__name__}" for t, p, _ in tree for d in p.defects]
    return {
        "subject": msg["subject"],
        "from": ", ".join(address_list(msg, "from")),
        "to": address_list(msg, "to"),
        "has_date": msg["date"] is not None,
        "has_message_id": msg["message-id"] is not None,
        "mime_tree": [t for t, _, _ in tree],
        "has_text_plain": any(t == "text/plain" and body(t, p, a) for t, p, a in leaves),
        "has_text_html": any(t == "text/html" and body(t, p, a) for t, p, a in leaves),
        "text_plain": texts[0] if texts else None,
        "attachments": attachments,
        "inline_parts": inline,
        "defects": defects,
    }


def html_part(msg):
    """The HTML body: the first text/html part that is not an attachment."""
    for part in msg.walk():
        if part.get_content_type() == "text/html" and part.get_content_disposition() != "attachment":
            return part
    return None


# ---------------------------------------------------------------- HTML checks


class ProblemFinder(html.parser.HTMLParser):
    def __init__(self, known_cids):
        super().__init__(convert_charrefs=True)
        self.known_cids = known_cids
        self.problems = []
        self.tag_counts = {}
        self.in_style = False

    def add(self, problem):
        if problem not in self.problems:
            self.problems.append(problem)

    def check_url(self, url, where):
        if is_remote(url):
            self.add(f"external resource: {where} {url.strip()}")
        for m in CID_REF.finditer(url):
            cid = urllib.parse.unquote(m.group(1))
            if cid not in self.known_cids:
                self.add(f"cid:{cid} is referenced by {where} but no part carries Content-ID <{cid}>")

    def check_css(self, css, where):
        for m in CSS_URL.finditer(css):
            self.check_url(m.group(2), f"CSS url() in {where}")
        for m in CSS_IMPORT.finditer(css):
            self.check_url(m.group(2), f"CSS @import in {where}")

    def handle_starttag(self, tag, attrs):
        if tag in FORBIDDEN_TAGS:
            self.tag_counts[tag] = self.tag_counts.get(tag, 0) + 1
        if tag == "style":
            self.in_style = True
        attrs = {k: v or "" for k, v in attrs}
        for name in RESOURCE_ATTRS:
            if name in attrs:
                values = [attrs[name]]
                if name == "srcset":
                    values = [c.strip().split(" ")[0] for c in attrs[name].split(",") if c.strip()]
                for v in values:
                    self.check_url(v, f"<{tag} {name}>")
        if tag == "link" and "href" in attrs:
            self.check_url(attrs["href"], "<link href>")
        if "style" in attrs:
            self.check_css(attrs["style"], f"<{tag} style>")
        if tag == "img":
            src = attrs.get("src", "").strip()
            if not src.lower().startswith(("cid:", "data:")):
                self.add(f"<img> src is not cid: or data: ({src or 'no src'}); mail clients show it broken or blocked")

    handle_startendtag = handle_starttag

    def handle_endtag(self, tag):
        if tag == "style":
            self.in_style = False

    def handle_data(self, data):
        if self.in_style:
            self.check_css(data, "<style>")


def html_problems(text, known_cids):
    finder = ProblemFinder(known_cids)
    finder.feed(text)
    finder.close()
    tags = [
        f"<{tag}> x{finder.tag_counts[tag]}: {why}"
        for tag, why in FORBIDDEN_TAGS.items()
        if tag in finder.tag_counts
    ]
    return tags + finder.problems


# ---------------------------------------------------------------- Chromium

MEASURE_JS = """
<script>(function () {
  function measure() {
    var se = document.scrollingElement || document.documentElement;
    var imgs = Array.prototype.slice.call(document.images);
    var broken = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; });
    var maxRight = 0, widest = null;
    // body's descendants: <html> and <body> always span the viewport
    var all = document.body ? document.body.getElementsByTagName('*') : [];
    for (var k = 0; k < all.length; k++) {
      var el = all[k], r = el.getBoundingClientRect();
      if (r.width === 0 && r.height === 0) continue;
      var right = r.right + window.scrollX;
      if (right > maxRight) { maxRight = right; widest = el; }
    }
    var describe = function (el) {
      if (!el) return null;
      var d = el.tagName.toLowerCase();
      if (el.id) d += '#' + el.id;
      if (typeof el.className === 'string' && el.className) d += '.' + el.className.split(/\\s+/).join('.');
      return d;
    };
    document.documentElement.setAttribute('data-lethe-measure', JSON.stringify({
      scroll_width: se.scrollWidth,
      height: se.scrollHeight,
      viewport_width: window.innerWidth,
      images: imgs.length,
      broken_images: broken.length,
      broken_image_srcs: broken.map(function (i) { return i.getAttribute('src'); }),
      max_right: Math.round(maxRight * 10) / 10,
      widest_element: describe(widest)
    }));
  }
  if (document.readyState === 'complete') measure();
  else window.addEventListener('load', measure);
})();</script>
"""
MEASURE_ATTR = re.compile(r'data-lethe-measure="([^"]*)"')


def find_chromium(given):
    candidates = [given] if given else [
        os.environ.get("LETHE_TEST_CHROMIUM"),
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        shutil.which("google-chrome"),
    ]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    if given:
        raise Fatal(f"chromium not found or not executable: {given}")
    raise Fatal("chromium not found (set --chromium or LETHE_TEST_CHROMIUM; "
                "scripts/test-servers installs it: apt-get install chromium)")


def run_chromium(chromium, args, url, what):
    """One headless run with its own profile folder; returns stdout. Chromium's
    stderr (dbus noise) is shown only when the run fails."""
    profile = tempfile.mkdtemp(prefix="lethe-chromium-")
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--no-first-run", "--no-default-browser-check", "--disable-extensions",
        "--disable-background-networking", "--disable-sync",
        # No network, like a mail client that blocks remote content (and
        # tests never reach out): remote images show broken.
        "--host-resolver-rules=MAP * ~NOTFOUND",
        *args, url,
    ]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=CHROMIUM_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise Fatal(f"chromium ({what}) timed out after {CHROMIUM_TIMEOUT_S} s on {url}\n"
                        + err.decode(errors="replace"))
        if proc.returncode != 0:
            raise Fatal(f"chromium ({what}) exited {proc.returncode} on {url}\n"
                        f"command: {' '.join(cmd)}\n" + err.decode(errors="replace"))
        return out.decode("utf-8", errors="replace"), err.decode(errors="replace")
    except OSError as e:
        raise Fatal(f"cannot run chromium {chromium}: {e}")
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def inject(text, snippet):
    i = text.lower().rfind("</body>")
    return text + snippet if i < 0 else text[:i] + snippet + text[i:]


def measure(chromium, html_path, text, charset):
    """Loads a copy of the page with MEASURE_JS added, at a 600 px wide (and
    short: the height measured is the content's) viewport."""
    copy = html_path.with_name(html_path.stem + ".measure.html")
    copy.write_bytes(inject(text, MEASURE_JS).encode(charset, errors="xmlcharrefreplace"))
    try:
        dom, err = run_chromium(chromium, [
            f"--window-size={VIEWPORT_WIDTH},100", "--virtual-time-budget=3000", "--dump-dom",
        ], copy.resolve().as_uri(), "measure")
    finally:
        copy.unlink(missing_ok=True)
    m = MEASURE_ATTR.search(dom)
    if not m:
        raise Fatal(f"chromium produced no measurement for {html_path} (did the page load?)\n{err}")
    return json.loads(html.unescape(m.group(1)))


def screenshot(chromium, html_path, png_path, height):
    png_path.unlink(missing_ok=True)
    run_chromium(chromium, [
        f"--window-size={VIEWPORT_WIDTH},{height}", f"--screenshot={png_path.resolve()}",
    ], html_path.resolve().as_uri(), "screenshot")
    if not png_path.is_file():
        raise Fatal(f"chromium wrote no screenshot {png_path}")


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        raise Fatal(f"{path} is not a PNG")
    return struct.unpack(">II", head[16:24])


# ---------------------------------------------------------------- pixels


def parse_colors(spec):
    colors = []
    for c in (spec or "").split(","):
        c = c.strip().lstrip("#").lower()
        if not c:
            continue
        if not re.fullmatch(r"[0-9a-f]{6}", c):
            raise Fatal(f"--colors: not a hex RRGGBB colour: {c}")
        colors.append(c)
    return colors


def require_pillow():
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise Fatal("--colors needs Pillow: run with the venv of scripts/test-servers "
                    "($HOME/.cache/lethe-test/venv/bin/python)")


def find_bars(png_path, colors):
    """Per colour, the solid rectangles: maximal horizontal runs (>= 2 px) of
    the colour (+-2 per channel), joined over consecutive rows that have a
    run with the same x and width; those >= 6 px high, sorted by y."""
    from PIL import Image, ImageChops
    with Image.open(png_path) as im:
        rgb = im.convert("RGB")
    width, height = rgb.size
    channels = rgb.split()
    result = {}
    run = re.compile(rb"\xff{%d,}" % BAR_MIN_RUN)
    for color in colors:
        target = [int(color[i:i + 2], 16) for i in (0, 2, 4)]
        masks = [
            ch.point(lambda v, t=t: 255 if abs(v - t) <= COLOR_TOLERANCE else 0)
            for ch, t in zip(channels, target)
        ]
        mask = ImageChops.multiply(ImageChops.multiply(masks[0], masks[1]), masks[2]).tobytes()
        open_rects, done = {}, []
        for y in range(height):
            row = mask[y * width:(y + 1) * width]
            still_open = {}
            for m in run.finditer(row):
                key = (m.start(), m.end() - m.start())
                rect = open_rects.pop(key, None)
                if rect is None:
                    rect = {"x": key[0], "y": y, "width": key[1], "height": 0}
                rect["height"] += 1
                still_open[key] = rect
            done.extend(open_rects.values())
            open_rects = still_open
        done.extend(open_rects.values())
        bars = [r for r in done if r["height"] >= BAR_MIN_HEIGHT]
        result[color] = sorted(bars, key=lambda r: (r["y"], r["x"]))
    return result


# ---------------------------------------------------------------- per message


def safe_name(s):
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("._") or "part"


def extract_cid_parts(msg, files_dir):
    """Writes every part with a Content-ID to files_dir; {content id: file name}."""
    found = {}
    for part in msg.walk():
        cid = content_id(part)
        if cid is None or part.is_multipart():
            continue
        ext = mimetypes.guess_extension(part.get_content_type()) or ".bin"
        name = f"{len(found):02d}-{safe_name(part.get_filename() or cid)}"
        if not name.lower().endswith(ext) and not part.get_filename():
            name += ext
        files_dir.mkdir(parents=True, exist_ok=True)
        (files_dir / name).write_bytes(payload_bytes(part))
        found[cid] = name
    return found


def rewrite_cids(text, cid_files, files_dir_name):
    def sub(m):
        cid = urllib.parse.unquote(m.group(1))
        if cid in cid_files:
            return f"{files_dir_name}/{urllib.parse.quote(cid_files[cid])}"
        return m.group(0)  # left as cid:, which the browser shows broken
    return CID_REF.sub(sub, text)


def check_message(path, name, out_dir, chromium, colors):
    try:
        with open(path, "rb") as f:
            msg = email.message_from_binary_file(f, policy=email.policy.default)
        if not msg.keys():
            raise ValueError("no header at all: not an email")
        facts = {"file": str(path), "name": name, **structure(msg)}
        part = html_part(msg)
        text = part.get_content() if part is not None else None
    except (OSError, LookupError, ValueError, TypeError, email.errors.MessageError) as e:
        raise Fatal(f"cannot parse {path}: {type(e).__name__}: {e}")
    render = {
        "html_problems": [], "html_file": None, "png": None, "png_width": None, "png_height": None,
        "scroll_width": None, "height": None, "max_right": None, "widest_element": None,
        "images": None, "broken_images": None, "broken_image_srcs": [], "fits_600": None,
        "bars": {},
    }
    facts.update(render)
    if text is None:
        facts["html_problems"] = ["no text/html part"]
        return facts

    known = {c["content_id"] for c in facts["inline_parts"]}
    facts["html_problems"] = html_problems(text, known)

    charset = part.get_content_charset() or "utf-8"
    try:
        "".encode(charset)
    except LookupError:
        charset = "utf-8"
    files_dir = out_dir / f"{name}.files"
    shutil.rmtree(files_dir, ignore_errors=True)
    cid_files = extract_cid_parts(msg, files_dir)
    page = rewrite_cids(text, cid_files, files_dir.name)
    html_path = out_dir / f"{name}.html"
    html_path.write_bytes(page.encode(charset, errors="xmlcharrefreplace"))

    m = measure(chromium, html_path, page, charset)
    png_path = out_dir / f"{name}.png"
    screenshot(chromium, html_path, png_path, max(1, min(int(m["height"]), MAX_SCREENSHOT_HEIGHT)))
    w, h = png_size(png_path)
    facts.update({
        "html_file": str(html_path), "png": str(png_path), "png_width": w, "png_height": h,
        "scroll_width": m["scroll_width"], "height": m["height"],
        "max_right": m["max_right"], "widest_element": m["widest_element"],
        "images": m["images"], "broken_images": m["broken_images"],
        "broken_image_srcs": m["broken_image_srcs"],
        "fits_600": m["scroll_width"] <= VIEWPORT_WIDTH,
        "bars": find_bars(png_path, colors) if colors else {},
    })
    return facts


def unique_names(paths):
    names, seen = [], set()
    for p in paths:
        base, n = safe_name(Path(p).stem), 1
        name = base
        while name in seen:
            n += 1
            name = f"{base}-{n}"
        seen.add(name)
        names.append(name)
    return names


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for NAME.html, NAME.files/, NAME.png")
    ap.add_argument("--colors", help="comma-separated hex RRGGBB colours whose bars to report")
    ap.add_argument("--chromium", help="path of the chromium binary "
                                       "(default: $LETHE_TEST_CHROMIUM, then chromium on PATH)")
    ap.add_argument("eml", nargs="+", help=".eml files")
    args = ap.parse_args(argv)
    try:
        colors = parse_colors(args.colors)
        if colors:
            require_pillow()
        chromium = find_chromium(args.chromium)
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        messages = [
            check_message(Path(p), name, out_dir, chromium, colors)
            for p, name in zip(args.eml, unique_names(args.eml))
        ]
    except Fatal as e:
        print(f"render.py: {e}", file=sys.stderr)
        return 2
    json.dump({"messages": messages}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
