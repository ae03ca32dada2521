"""Drive headless Chromium over the DevTools protocol, through a pipe
(--remote-debugging-pipe), with nothing but the standard library.

    drive.py CHROMIUM PROFILE_DIR URL SCRIPT [SCREENSHOT.png]

Opens URL, waits for its load event, evaluates SCRIPT (a JavaScript
expression; a promise is awaited) and prints the value it returns. With
SCREENSHOT, saves a PNG of the page after the script ran. Exits non-zero
with the browser's own words when anything fails.
"""

import base64
import json
import os
import subprocess
import sys
import time

READ_FD, WRITE_FD = 3, 4  # what Chromium reads commands from and writes answers to


class Browser:
    def __init__(self, chromium, profile):
        to_browser_r, self.to_browser = os.pipe()
        self.from_browser, from_browser_w = os.pipe()
        # The shell puts the child's ends on fds 3 and 4 as it starts Chromium.
        high_r, high_w = os.dup(to_browser_r), os.dup(from_browser_w)
        os.close(to_browser_r)
        os.close(from_browser_w)
        args = [chromium, "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--no-first-run",
                f"--user-data-dir={profile}", "--remote-debugging-pipe",
                "--window-size=1200,1600", "about:blank"]
        self.proc = subprocess.Popen(
            ["/bin/sh", "-c", f'exec "$0" "$@" {READ_FD}<&{high_r} {WRITE_FD}>&{high_w}'] + args,
            pass_fds=(high_r, high_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(high_r)
        os.close(high_w)
        self.buffer = b""
        self.next_id = 0
        self.events = []

    def send(self, method, params=None, session=None):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        return self.wait(lambda m: m.get("id") == self.next_id)

    def wait(self, matches, timeout=30):
        until = time.time() + timeout
        while time.time() < until:
            for i, m in enumerate(self.events):
                if matches(m):
                    del self.events[i]
                    if "error" in m:
                        sys.exit(f"devtools error: {m['error']}")
                    return m
            chunk = os.read(self.from_browser, 1 << 16)
            if not chunk:
                sys.exit("the browser closed its pipe")
            self.buffer += chunk
            *whole, self.buffer = self.buffer.split(b"\0")
            self.events.extend(json.loads(w) for w in whole if w)
        sys.exit("timed out waiting for the browser")

    def close(self):
        try:
            self.send("Browser.close")
        except SystemExit:
            pass
        self.proc.wait(timeout=10)


def main():
    chromium, profile, url, script = sys.argv[1:5]
    screenshot = sys.argv[5] if len(sys.argv) > 5 else None
    b = Browser(chromium, profile)
    target = b.send("Target.createTarget", {"url": "about:blank"})["result"]["targetId"]
    session = b.send("Target.attachToTarget", {"targetId": target, "flatten": True})["result"]["sessionId"]
    b.send("Page.enable", session=session)
    b.send("Page.navigate", {"url": url}, session=session)
    b.wait(lambda m: m.get("method") == "Page.loadEventFired")
    answer = b.send("Runtime.evaluate", {"expression": script, "awaitPromise": True,
                                         "returnByValue": True}, session=session)["result"]
    if "exceptionDetails" in answer:
        b.close()
        sys.exit(f"the script failed: {answer['exceptionDetails']}")
    if screenshot:
        shot = b.send("Page.captureScreenshot", {"format": "png"}, session=session)
        with open(screenshot, "wb") as f:
            f.write(base64.b64decode(shot["result"]["data"]))
    print(answer["result"].get("value"))
    b.close()


if __name__ == "__main__":
    main()
