#!/usr/bin/env python3
"""Two small parts of `make demo`, standard library only.

  demo_helpers.py echo PORT        an upstream app that answers with the JSON of the headers it received
  demo_helpers.py login URL USER   a browser: follows redirects with a cookie jar, signs in at the IdP's
                                   login form as USER, prints the page it lands on
"""
import http.cookiejar
import http.server
import json
import re
import sys
import urllib.parse
import urllib.request


class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):
        body = json.dumps(
            {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}, indent=2
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args):
        pass


def login(url, user):
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.addheaders = [("Accept", "text/html")]
    page = opener.open(url, timeout=10)
    body = page.read().decode()
    if "/interaction/" not in page.geturl():
        sys.exit(f"expected the IdP's login form, landed on {page.geturl()}")
    action = re.search(r'<form[^>]*action="([^"]+)"', body)
    target = urllib.parse.urljoin(page.geturl(), action.group(1) if action else page.geturl())
    form = urllib.parse.urlencode({"prompt": "login", "login": user, "password": "demo"}).encode()
    landed = opener.open(target, data=form, timeout=10)
    print(landed.read().decode())
    cookie = [c for c in jar if c.name == "GATEWAY_SESSION"]
    if not cookie:
        sys.exit("no session cookie was set")


if __name__ == "__main__":
    if sys.argv[1] == "echo":
        http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Echo).serve_forever()
    elif sys.argv[1] == "login":
        login(sys.argv[2], sys.argv[3])
