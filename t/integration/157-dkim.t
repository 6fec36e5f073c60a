#!/usr/bin/env python3
# 157-dkim (issue 9, section 3): DKIM (RFC 6376) signatures are verified
# with libopendkim after the 250, the key fetched from our resolver
# (dnsmasq serves the TXT record opendkim-genkey made): a signed message
# gives dkim=pass header.d=pass.test header.s=sel1 in the primary's
# Authentication-Results header, a tampered one dkim=fail, an unsigned one
# dkim=none; the record's flags say whether the sender's domain passed.
import base64
import hashlib
import os
import subprocess
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403

GENKEY = shutil.which("opendkim-genkey") or "/usr/sbin/opendkim-genkey"


def relaxed_header(name, value):
    v = re.sub(r"\r\n", "", value)
    v = re.sub(r"[ \t]+", " ", v).strip()
    return name.strip().lower() + ":" + v


def relaxed_body(body):
    lines = body.split(b"\r\n")
    out = [re.sub(rb"[ \t]+", b" ", ln).rstrip(b" \t") for ln in lines]
    while out and out[-1] == b"":
        out.pop()
    return b"".join(ln + b"\r\n" for ln in out)


def dkim_sign(msg, domain, selector, keyfile):
    """A relaxed/relaxed rsa-sha256 DKIM signature (RFC 6376 3.4, 3.7),
    made with the cryptography package: python3-dkim is not installed."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding
    head, body = msg.split(b"\r\n\r\n", 1)
    fields = []
    for ln in head.decode("latin-1").split("\r\n"):
        if ln[:1] in (" ", "\t") and fields:
            fields[-1] += "\r\n" + ln
        else:
            fields.append(ln)
    signed = ["from", "to", "subject", "message-id"]
    byname = {f.split(":", 1)[0].strip().lower(): f for f in fields}
    bh = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode()
    sig = ("v=1; a=rsa-sha256; c=relaxed/relaxed; d=%s; s=%s; h=%s; bh=%s; b="
           % (domain, selector, ":".join(signed), bh))
    data = "".join(relaxed_header(*byname[h].split(":", 1)) + "\r\n" for h in signed)
    data += relaxed_header("DKIM-Signature", sig)
    with open(keyfile, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    b = base64.b64encode(key.sign(data.encode(), padding.PKCS1v15(), hashes.SHA256())).decode()
    return ("DKIM-Signature: " + sig + b + "\r\n").encode() + msg


def ar_of(body):
    head = body.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    unfolded = re.sub(r"\r\n[ \t]+", " ", head)
    ars = [ln for ln in unfolded.split("\r\n") if ln.lower().startswith("authentication-results:")]
    return ars


def main():
    require_binaries()
    if not os.access(GENKEY, os.X_OK):
        skip_all("opendkim-genkey not installed (opendkim-tools)")
    try:
        import cryptography  # noqa: F401
    except ImportError:
        skip_all("python cryptography not available to sign test messages")
    kdir = tempfile.mkdtemp(prefix="mxtest-dkim.")
    subprocess.run([GENKEY, "-D", kdir, "-d", "pass.test", "-s", "sel1", "-b", "1024"], check=True)
    with open(os.path.join(kdir, "sel1.txt")) as f:
        txt = "".join(re.findall(r'"([^"]*)"', f.read()))
    like(txt, r"^v=DKIM1;.*p=\S+", "opendkim-genkey made a key record")
    dns = Dnsmasq(txt=[("sel1._domainkey.pass.test", txt),
                       ("pass.test", "v=spf1 ip4:192.0.2.0/24 -all")]).start()
    prim = FakeSMTP(host="127.0.0.2", name="primary.example.org").start()
    srv = Server(domains=[{"name": "example.org", "primary": "[127.0.0.2]:%d" % prim.port}],
                 settings={"resolver": dns.address, "delivery": fast_delivery()})
    srv.start()

    key = os.path.join(kdir, "sel1.private")
    good = dkim_sign(make_message("dkim-good"), "pass.test", "sel1", key)
    bad = dkim_sign(make_message("dkim-bad"), "pass.test", "sel1", key).replace(b"line", b"LINE", 1)
    plain = make_message("dkim-none")
    ok(bad != dkim_sign(make_message("dkim-bad"), "pass.test", "sel1", key), "tampered body differs")
    c = srv.raw()
    c.ehlo("client.example.com")
    for m in (good, bad, plain):
        t0 = time.monotonic()
        rs = c.transaction("sender@pass.test", ["user@example.org"], m)
        is_(rs[-1].code, 250, "%s: accepted in %.2fs" % (message_id(m), time.monotonic() - t0))
    c.cmd("QUIT")
    c.close()
    ok(wait_for(lambda: prim.count() == 3, 30, 0.2), "three messages delivered")
    got = {message_id(b): b for b in prim.bodies()}
    for mid, want in (("<dkim-good@example.com>", r"dkim=pass header\.d=pass\.test header\.s=sel1"),
                      ("<dkim-bad@example.com>", r"dkim=fail header\.d=pass\.test header\.s=sel1"),
                      ("<dkim-none@example.com>", r"dkim=none")):
        ars = ar_of(got.get(mid, b""))
        is_(len(ars), 1, "%s: one A-R header" % mid)
        like(ars[0] if ars else "", want, "%s: %s" % (mid, want.replace("\\", "")))
        like(ars[0] if ars else "", r"spf=fail smtp\.mailfrom=sender@pass\.test",
             "%s: SPF and DKIM in the same header" % mid)
    log = srv.log()
    like(log, r"dkim: dkim=pass header\.d=pass\.test header\.s=sel1", "the DKIM result is logged")
    shutil.rmtree(kdir, ignore_errors=True)
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
