#!/usr/bin/env python3
"""Does what a data subject does with Lethe's two mails, without Lethe:
reads them from a maildir (as the SMTP sink stored them), takes the link from
the one and the password from the other, downloads the ZIP and opens it with
an AES-capable unzip (pyzipper, as 7-Zip or Keka would). Prints JSON:

  {"password": str, "all_encrypted": bool,
   "link_mail_has_password": bool, "password_mail_has_link": bool,
   "entries": {name: size}, "tables": {table: rows in its JSON},
   "csv_rows": {table: data lines in its CSV}, "wrong_password_refused": bool}

usage: open_subject_copy.py MAILDIR SUBJECT_ADDRESS
"""

import csv
import email
import email.policy
import io
import json
import os
import re
import sys
import urllib.request

import pyzipper

PASSWORD = re.compile(r"\b[a-z2-9]{5}(?:-[a-z2-9]{5}){4}\b")
LINK = re.compile(r"(?:https?|file)://[^\s\"<>]+")


def messages(maildir, to):
    for root, _, files in os.walk(maildir):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                msg = email.message_from_binary_file(f, policy=email.policy.default)
            if to in str(msg.get("To", "")):
                yield msg


def text(msg):
    return msg.get_body(preferencelist=("plain",)).get_content()


def main():
    maildir, to = sys.argv[1], sys.argv[2]
    mails = list(messages(maildir, to))
    link_mail = next(m for m in mails if "export is ready" in m["Subject"])
    secret_mail = next(m for m in mails if "password for your data export" in m["Subject"])
    link = LINK.search(text(link_mail)).group(0)
    password = PASSWORD.search(text(secret_mail)).group(0)
    with urllib.request.urlopen(link, timeout=10) as r:
        body = r.read()
    out = {
        "password": password,
        "link_mail_has_password": bool(PASSWORD.search(text(link_mail))),
        "password_mail_has_link": bool(LINK.search(text(secret_mail))),
        "entries": {},
        "tables": {},
        "csv_rows": {},
    }
    with pyzipper.AESZipFile(io.BytesIO(body)) as z:
        z.setpassword(password.encode())
        # Every entry encrypted, with AES-256 (WinZip AE-x strength 3), not ZipCrypto.
        out["all_encrypted"] = all(
            i.flag_bits & 0x1 and getattr(i, "wz_aes_strength", None) == 3 for i in z.infolist()
        )
        for info in z.infolist():
            data = z.read(info.filename)
            out["entries"][info.filename] = len(data)
            if "/" not in info.filename and info.filename.endswith(".json"):
                out["tables"][info.filename[:-5]] = len(json.loads(data))
            if info.filename.endswith(".csv"):
                rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
                out["csv_rows"][info.filename[:-4]] = len(rows) - 1
        z.setpassword(b"not-the-password")
        try:
            z.read(z.infolist()[0].filename)
            out["wrong_password_refused"] = False
        except RuntimeError:
            out["wrong_password_refused"] = True
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
