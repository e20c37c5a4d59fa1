#!/usr/bin/env python3
"""Self-test of tests/mail/render.py on emails built here with Python's email
package: a good one (table-cell bars, an inline cid: PNG, a CSV attachment, a
presigned download link), one with a cid: no part carries, and one that
breaks every rule (SVG, script, <style>, remote image and stylesheet, too wide).

run: python3 -m unittest tests/mail/test_render.py   (or python3 tests/mail/test_render.py)

render.py runs under a Python with Pillow: $LETHE_TEST_PYTHON, else the venv of
scripts/test-servers ($HOME/.cache/lethe-test/venv), else this interpreter.
Without chromium the tests are skipped, unless LETHE_REQUIRE_SERVERS=1.
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest
import zlib
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from datetime import datetime, timezone
from pathlib import Path

RENDER = Path(__file__).resolve().with_name("render.py")
RED, ORANGE, GREEN = "c0392b", "d35400", "27ae60"


def python_with_pillow():
    venv = Path.home() / ".cache/lethe-test/venv/bin/python"
    for p in (os.environ.get("LETHE_TEST_PYTHON"), str(venv), sys.executable):
        if p and os.path.exists(p):
            if subprocess.run([p, "-c", "import PIL"], capture_output=True).returncode == 0:
                return p
    return None


def chromium():
    return os.environ.get("LETHE_TEST_CHROMIUM") or shutil.which("chromium")


def solid_png(width, height, rgb):
    """A PNG of one colour, with the standard library only."""
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))
    row = b"\x00" + bytes(rgb) * width
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(row * height))
            + chunk(b"IEND", b""))


def bar(width, color):
    return (f'<td width="{width}" height="14" bgcolor="#{color}" style="background-color:#{color};'
            f'width:{width}px;height:14px;font-size:0;line-height:0">&nbsp;</td>')


def bar_row(label, width, color, count):
    """One table per row, as mail templates do: cells of one table share column widths."""
    return ('<table cellpadding="0" cellspacing="0" border="0" style="border-collapse:collapse;margin:0 0 6px 0">'
            f'<tr><td width="80" style="width:80px;font-size:12px">{label}</td>{bar(width, color)}'
            f'<td style="padding-left:4px;font-size:12px">{count}</td></tr></table>')


def report_mail(img_cid_in_html, img_cid_carried="chart@lethe"):
    """multipart/mixed[ alternative[ text/plain, related[ text/html, image/png ] ], text/csv ]"""
    msg = EmailMessage()
    msg["Subject"] = "[lethe] DSR SLA report: 1 overdue"
    msg["From"] = "Lethe <lethe@example.org>"
    msg["To"] = "dpo@example.org, Second DPO <dpo2@example.org>"
    msg["Date"] = format_datetime(datetime(2026, 11, 30, 9, 0, tzinfo=timezone.utc))
    msg["Message-ID"] = make_msgid(domain="lethe.local")
    msg.set_content("1 overdue.\n\nDownload: https://s3.example/export?X-Amz-Signature=abc\n")
    page = f"""<!doctype html><html><head><meta charset="utf-8"></head>
<body style="margin:0;padding:8px;font-family:sans-serif">
<h2 style="margin:0 0 8px 0">DSR SLA report — 1 overdue</h2>
{bar_row("overdue", 180, RED, 3)}
{bar_row("0-2 days", 90, ORANGE, 1)}
<p><img src="cid:{img_cid_in_html}" width="40" height="20" alt="legend"></p>
<p><a href="https://s3.example/export?X-Amz-Signature=abc">Download the export</a></p>
</body></html>"""
    msg.add_alternative(page, subtype="html")
    html_part = msg.get_payload()[1]
    html_part.add_related(solid_png(40, 20, (0x27, 0xAE, 0x60)), "image", "png",
                          cid=f"<{img_cid_carried}>", filename="legend.png", disposition="inline")
    msg.add_attachment("id,state\n1,overdue\n".encode(), maintype="text", subtype="csv",
                       filename="dsr-sla.csv")
    return msg


def bad_mail():
    msg = EmailMessage()
    msg["Subject"] = "bad"
    msg["From"] = "lethe@example.org"
    msg["To"] = "dpo@example.org"
    msg.set_content("plain")
    msg.add_alternative("""<html><head><style>p{color:red}</style>
<link rel="stylesheet" href="https://cdn.example/x.css"></head><body>
<svg width="10" height="10"><rect width="10" height="10"/></svg>
<script>document.title='x'</script>
<img src="https://tracker.example/pixel.gif">
<div style="background:url(//cdn.example/bg.png)">x</div>
<table width="800" style="width:800px"><tr><td>too wide</td></tr></table>
</body></html>""", subtype="html")
    return msg


class RenderTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.python = python_with_pillow()
        cls.chromium = chromium()
        missing = [what for what, ok in (("Pillow", cls.python), ("chromium", cls.chromium)) if not ok]
        if missing:
            why = f"needs {' and '.join(missing)} (source scripts/test-servers; lethe_servers_start)"
            if os.environ.get("LETHE_REQUIRE_SERVERS") == "1":
                raise RuntimeError(why)
            raise unittest.SkipTest(why)
        cls.dir = Path(tempfile.mkdtemp(prefix="lethe-render-test-"))
        mails = {"good": report_mail("chart@lethe"), "brokencid": report_mail("nosuch@lethe"),
                 "bad": bad_mail()}
        for name, msg in mails.items():
            (cls.dir / f"{name}.eml").write_bytes(msg.as_bytes())
        cls.result = cls.render(*(cls.dir / f"{n}.eml" for n in mails))
        cls.by_name = {m["name"]: m for m in cls.result["messages"]}

    @classmethod
    def tearDownClass(cls):
        if hasattr(cls, "dir") and not os.environ.get("LETHE_KEEP_RENDER"):
            shutil.rmtree(cls.dir, ignore_errors=True)

    @classmethod
    def render(cls, *emls, chromium=None):
        cmd = [cls.python, str(RENDER), "--out", str(cls.dir / "out"),
               "--colors", f"{RED},#{ORANGE},{GREEN}", "--chromium", chromium or cls.chromium,
               *map(str, emls)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise AssertionError(f"render.py exited {proc.returncode}: {proc.stderr}")
        return json.loads(proc.stdout)

    def test_structure(self):
        m = self.by_name["good"]
        self.assertEqual(m["subject"], "[lethe] DSR SLA report: 1 overdue")
        self.assertEqual(m["from"], "Lethe <lethe@example.org>")
        self.assertEqual(m["to"], ["dpo@example.org", "Second DPO <dpo2@example.org>"])
        self.assertTrue(m["has_date"] and m["has_message_id"])
        self.assertEqual(m["mime_tree"], ["multipart/mixed", "multipart/alternative", "text/plain",
                                          "multipart/related", "text/html", "image/png", "text/csv"])
        self.assertTrue(m["has_text_plain"] and m["has_text_html"])
        self.assertEqual(m["attachments"],
                         [{"filename": "dsr-sla.csv", "content_type": "text/csv", "size": 19,
                           "csv": {"header": ["id", "state"], "rows": 1, "ragged_rows": 0,
                                   "cells_with_at": 0}}])
        self.assertEqual([(p["content_id"], p["content_type"]) for p in m["inline_parts"]],
                         [("chart@lethe", "image/png")])
        self.assertFalse(self.by_name["bad"]["has_date"])

    def test_good_mail_renders_clean(self):
        m = self.by_name["good"]
        self.assertEqual(m["html_problems"], [])  # the <a href="https://..."> link is allowed
        self.assertEqual((m["images"], m["broken_images"]), (1, 0))
        self.assertTrue(m["fits_600"])
        self.assertLessEqual(m["scroll_width"], 600)
        self.assertEqual(m["png_width"], 600)
        self.assertEqual(m["png_height"], m["height"])
        self.assertTrue(Path(m["png"]).is_file() and Path(m["html_file"]).is_file())

    def test_bars(self):
        m = self.by_name["good"]
        red, orange, green = m["bars"][RED], m["bars"][ORANGE], m["bars"][GREEN]
        self.assertEqual(len(red), 1, red)
        self.assertAlmostEqual(red[0]["width"], 180, delta=1)
        self.assertAlmostEqual(red[0]["height"], 14, delta=1)
        self.assertEqual(len(orange), 1, orange)
        self.assertAlmostEqual(orange[0]["width"], 90, delta=1)
        self.assertEqual(orange[0]["x"], red[0]["x"])  # both start after the 80 px label
        self.assertGreater(orange[0]["y"], red[0]["y"])
        # the cid: image itself is on screen: its 40x20 green pixels
        self.assertEqual([(b["width"], b["height"]) for b in green], [(40, 20)])

    def test_missing_cid(self):
        m = self.by_name["brokencid"]
        self.assertTrue(any("cid:nosuch@lethe" in p for p in m["html_problems"]), m["html_problems"])
        self.assertEqual((m["images"], m["broken_images"]), (1, 1))
        self.assertEqual(m["bars"][GREEN], [])

    def test_bad_mail(self):
        m = self.by_name["bad"]
        problems = "\n".join(m["html_problems"])
        for needle in ("<svg>", "<script>", "<style>", "<link>", "https://cdn.example/x.css",
                       "https://tracker.example/pixel.gif", "//cdn.example/bg.png",
                       "<img> src is not cid: or data:"):
            self.assertIn(needle, problems)
        self.assertFalse(m["fits_600"])
        self.assertGreater(m["scroll_width"], 600)
        self.assertGreaterEqual(m["max_right"], 800)
        self.assertEqual((m["images"], m["broken_images"]), (1, 1))  # network is blocked

    def test_no_chromium_is_an_error(self):
        proc = subprocess.run([self.python, str(RENDER), "--out", str(self.dir / "x"),
                               "--chromium", "/nonexistent/chromium", str(self.dir / "good.eml")],
                              capture_output=True, text=True)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("chromium not found", proc.stderr)
        self.assertEqual(proc.stdout, "")


if __name__ == "__main__":
    unittest.main()
