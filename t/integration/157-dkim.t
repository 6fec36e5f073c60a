#!/usr/bin/env python3
# 157-dkim (issue 9, section 3): DKIM (RFC 6376) signatures are verified
# with libopendkim after the 250, the key fetched from our resolver
# (dnsmasq serves the TXT record opendkim-genkey made): a signed message
# gives dkim=pass header.d=pass.test header.s=sel1 in the primary's
# Authentication-Results header, a tampered one dkim=fail, an unsigned one
# dkim=none; the record's flags say whether the sender's domain passed.
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from mxtest import *  # noqa: F401,F403



def main():
    require_binaries()
    kdir, txt, key = dkim_key()
    like(txt, r"^v=DKIM1;.*p=\S+", "opendkim-genkey made a key record")
    dns, prim, srv = dkim_world(txt)

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
    # RFC 1870: SIZE= declares what is sent, A-R header included.
    short = [(message_id(m["body"]), m["mail_args"]) for m in prim.messages
             if int((re.search(r"SIZE=(\d+)", m["mail_args"] or "") or [0, -1])[1]) < len(m["body"])]
    is_(short, [], "SIZE= covers the message as sent, A-R header included")
    log = srv.log()
    like(log, r"dkim: dkim=pass header\.d=pass\.test header\.s=sel1", "the DKIM result is logged")
    shutil.rmtree(kdir, ignore_errors=True)
    is_(srv.stop(), 0, "mxkeepd exits 0")


run_main(main)
