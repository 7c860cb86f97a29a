"""The report in a real browser: headless Debian chromium, driven over the DevTools protocol.

Loads `results/index.html` when it exists (else a report built in a temporary folder), then
every model page and every attention view it links, and checks that no page logs a JavaScript
error or a failed load and that every plot (iframes included) rendered its SVG. Saves a
screenshot in a temporary folder; `INTERP_SCREENSHOT=results/report_screenshot.png` saves it
there instead (how the committed one is refreshed: a test run never writes into the repo).
Chromium is spoken to over `--remote-debugging-pipe` (NUL-separated JSON on fds 3/4), so no
websocket library is needed.
"""

import base64
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-pipe", "--allow-file-access-from-files", "--window-size=1400,2000"]

# Per document (the page, then each iframe): state, plot divs, plot divs with an SVG.
STATE_JS = """(() => {
  const docs = [document];
  for (const f of document.querySelectorAll('iframe')) {
    try { docs.push(f.contentDocument); } catch (e) { docs.push(null); }
  }
  return docs.map(d => d === null ? null : [d.URL, d.readyState,
    d.querySelectorAll('.plotly-graph-div').length,
    [...d.querySelectorAll('.plotly-graph-div')].filter(g => g.querySelector('.main-svg')).length]);
})()"""


def chromium_binary() -> str:
    """The chromium executable, installing it with scripts/install_chromium.sh if absent."""
    found = shutil.which("chromium") or ("/usr/bin/chromium"
                                         if Path("/usr/bin/chromium").exists() else None)
    if found:
        return found
    log = subprocess.run(["bash", str(REPO / "scripts" / "install_chromium.sh")],
                         capture_output=True, text=True, timeout=600)
    found = shutil.which("chromium")
    if not found:
        pytest.skip("chromium is not installed and scripts/install_chromium.sh could not "
                    f"install it: {log.stdout.strip().splitlines()[-1:]}")
    return found


class Chromium:
    """Headless chromium with one page, driven over the DevTools protocol on a pipe."""

    def __init__(self, binary: str, workdir: Path):
        self.log = open(workdir / "chromium.log", "w")  # noqa: SIM115 (closed in close())
        to_child, self.w = os.pipe()
        self.r, from_child = os.pipe()
        hi = [fcntl.fcntl(fd, fcntl.F_DUPFD, 20) for fd in (to_child, from_child)]

        def child_fds():
            os.dup2(hi[0], 3)
            os.dup2(hi[1], 4)

        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={workdir / 'profile'}", "about:blank"],
            pass_fds=(3, 4), preexec_fn=child_fds, stdout=self.log, stderr=self.log)
        for fd in (to_child, from_child, *hi):
            os.close(fd)
        self.buf, self.next_id, self.events = b"", 0, []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget",
                                 {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.page(f"{domain}.enable")
        self.page("Emulation.setDeviceMetricsOverride",
                  {"width": 1400, "height": 2000, "deviceScaleFactor": 1, "mobile": False})

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def page(self, method: str, params: dict | None = None) -> dict:
        return self.send(method, params, session=self.session)

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.r], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self.r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium exited; see chromium.log")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\0", 1)
        return json.loads(line)

    def evaluate(self, expression: str):
        result = self.page("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def load(self, path: Path, timeout: float = 20.0) -> list:
        """Open `path`; wait until it and its iframes are loaded and their plots drawn."""
        self.events.clear()
        self.page("Page.navigate", {"url": path.resolve().as_uri()})
        deadline = time.monotonic() + timeout
        while True:
            state = self.evaluate(STATE_JS)
            if state and state[0][0] == path.resolve().as_uri() and rendered(state):
                return state
            if time.monotonic() > deadline:
                return state
            time.sleep(0.2)

    def errors(self) -> list[str]:
        """JavaScript exceptions, console errors and failed loads seen since the last load."""
        self.evaluate("0")  # flush events queued behind the last answer
        out = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                out.append(f"exception: {details.get('exception', {}).get('description')}"
                           f" ({details.get('url')}:{details.get('lineNumber')})")
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                                   for a in params["args"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                entry = params["entry"]
                out.append(f"log: {entry['text']} {entry.get('url', '')}")
        return out

    def screenshot(self, path: Path) -> Path:
        data = self.page("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.w)
        os.close(self.r)
        self.log.close()


def rendered(state: list) -> bool:
    """Every document loaded, every iframe holds a plot, every plot div has its SVG."""
    if any(doc is None or doc[1] != "complete" for doc in state):
        return False
    frames_ok = all(doc[2] > 0 for doc in state[1:])
    return frames_ok and all(doc[2] == doc[3] for doc in state)


class Hrefs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs = []

    def handle_starttag(self, tag, attrs):
        href = dict(attrs).get("href")
        if tag == "a" and href and href.endswith(".html"):
            self.hrefs.append(href)


def linked_pages(page: Path) -> list[Path]:
    parser = Hrefs()
    parser.feed(page.read_text())
    return sorted({(page.parent / h).resolve() for h in parser.hrefs} - {page.resolve()})


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory(prefix="interp-browser-") as folder:
        yield Path(folder)


@pytest.fixture(scope="module")
def browser(workdir):
    chrome = Chromium(chromium_binary(), workdir)
    yield chrome
    chrome.close()


@pytest.fixture(scope="module")
def tmp_report(workdir):
    from test_report import make_results

    import interp
    from interp.report import build_report

    out = workdir / "results"
    out.mkdir()
    make_results(out, interp.load_model("random:tiny"))
    return build_report(out).index


@pytest.fixture(scope="module")
def site(request, workdir):
    """(index.html, screenshot path): the committed results if there are any, else a tmp one."""
    shot = Path(os.environ.get("INTERP_SCREENSHOT") or workdir / "report_screenshot.png")
    if (RESULTS / "index.html").exists():
        return RESULTS / "index.html", shot
    return request.getfixturevalue("tmp_report"), shot


def check_page(browser: Chromium, page: Path) -> int:
    """Load one page; assert no errors and all plots drawn; return the number of plots."""
    state = browser.load(page)
    errors = browser.errors()
    assert not errors, f"{page}: JavaScript errors: {errors}"
    assert state and rendered(state), f"{page}: not every plot rendered: {state}"
    return sum(doc[2] for doc in state)


def test_report_renders_without_errors(browser, site):
    t0 = time.monotonic()
    index, screenshot = site
    models = [p for p in linked_pages(index) if p.name == "index.html"]
    assert models, f"{index} links no model page"
    n_index = check_page(browser, index)
    shot = browser.screenshot(screenshot)
    assert shot.stat().st_size > 20_000, "screenshot is nearly empty"
    views = {p for m in models for p in linked_pages(m) if re.match(r"attention_", p.name)}
    plots = sum(check_page(browser, page) for page in [*models, *sorted(views)])
    print(f"\nchecked {1 + len(models) + len(views)} pages, {n_index + plots} plots in "
          f"{time.monotonic() - t0:.1f}s; screenshot {shot}")
    assert n_index > 0 and plots > 0


def test_head_heatmap_click_opens_attention_view(browser, tmp_report):
    heatmap = tmp_report.parent / "random-tiny" / "ioi" / "heads.html"
    check_page(browser, heatmap)
    opened = browser.evaluate("""(() => {
      let opened = [];
      window.open = (url, target) => { opened.push([url, target]); return null; };
      const gd = document.querySelector('.plotly-graph-div');
      gd.emit('plotly_click', {points: [{x: 2, y: 1}]});
      gd.emit('plotly_click', {points: [{x: 3, y: 1}]});
      return opened;
    })()""")
    assert opened == [["attention_L1H2.html", "_blank"]]  # L1H3 has no view: not linked
    assert (heatmap.parent / opened[0][0]).exists()
