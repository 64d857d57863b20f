// Drives Debian's chromium for the page tests, one JSON command per line on standard input,
// one JSON answer per line on standard output: {"id", "ok", "value"} or {"id", "ok": false,
// "error"}. Each named page lives in its own browser context (its own cookies), and every
// request a context makes is recorded.
//
//   node driver.mjs [CHROMIUM [CHROMIUM-ARGS...]]      (default /usr/bin/chromium)
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const browser = await chromium.launch({
  executablePath: process.argv[2] || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-sync',
    '--disable-background-networking', '--disable-component-update', '--autoplay-policy=no-user-gesture-required',
    ...process.argv.slice(3)],
});
const pages = new Map();

function page(name) {
  const p = pages.get(name);
  if (!p) throw new Error(`no page ${name}: open it first`);
  return p;
}

const ops = {
  // `insecure`: accept any certificate (a demo's own CA the browser was not given).
  async open({ page: name, url, insecure = false }) {
    const context = await browser.newContext({ viewport: { width: 1500, height: 950 }, ignoreHTTPSErrors: insecure });
    const requests = [];
    context.on('request', (r) => {
      let from = '';
      try { from = r.frame().url(); } catch (e) { from = ''; }
      requests.push({ url: r.url(), from });
    });
    const responses = [];
    context.on('response', async (r) => {
      let cookie = null;
      try { cookie = await r.headerValue('set-cookie'); } catch (e) { cookie = null; }
      responses.push({ url: r.url(), status: r.status(), cookie });
    });
    const p = await context.newPage();
    const console_ = [];
    p.on('console', (m) => console_.push(`${m.type()}: ${m.text()}`));
    pages.set(name, { context, page: p, requests, responses, console: console_ });
    if (url) await p.goto(url);
    return p.url();
  },
  async goto({ page: name, url }) {
    const response = await page(name).page.goto(url);
    return { url: page(name).page.url(), status: response ? response.status() : 0 };
  },
  // Through the local provider's login and consent pages, back to the relying party.
  async signin({ page: name, login, back_to: backTo, timeout_ms: timeout = 15000 }) {
    const p = page(name).page;
    await p.waitForSelector('input[name=login]', { timeout });
    await p.fill('input[name=login]', login);
    await p.fill('input[name=password]', 'not-checked');
    await p.click('button[type=submit]');
    const deadline = Date.now() + timeout;
    while (!p.url().startsWith(backTo)) {
      if (Date.now() > deadline) throw new Error(`not back at ${backTo} after signing in: at ${p.url()}`);
      try {
        const consent = await p.$('form button[type=submit], button[autofocus]');
        if (consent && !p.url().startsWith(backTo)) await consent.click();
      } catch (e) {
        // The page navigated under us: look again.
      }
      await p.waitForTimeout(100);
    }
    await p.waitForLoadState();
    return p.url();
  },
  async url({ page: name }) {
    return page(name).page.url();
  },
  async waitFor({ page: name, selector, state = 'visible', timeout_ms: timeout = 5000 }) {
    await page(name).page.waitForSelector(selector, { state, timeout });
    return true;
  },
  async text({ page: name, selector }) {
    return page(name).page.textContent(selector);
  },
  async fill({ page: name, selector, value }) {
    await page(name).page.fill(selector, value);
    return true;
  },
  async click({ page: name, selector }) {
    await page(name).page.click(selector);
    return true;
  },
  async eval({ page: name, js }) {
    return page(name).page.evaluate(js);
  },
  async screenshot({ page: name, path }) {
    await page(name).page.screenshot({ path, fullPage: true });
    return path;
  },
  async requests({ page: name }) {
    return page(name).requests;
  },
  async responses({ page: name }) {
    return page(name).responses;
  },
  async console({ page: name }) {
    return page(name).console;
  },
  async cookies({ page: name }) {
    return page(name).context.cookies();
  },
  async close({ page: name }) {
    await page(name).context.close();
    pages.delete(name);
    return true;
  },
  async quit() {
    await browser.close();
    setImmediate(() => process.exit(0));
    return true;
  },
};

const lines = createInterface({ input: process.stdin });
// One command at a time, in order.
let chain = Promise.resolve();
lines.on('line', (line) => {
  chain = chain.then(async () => {
    let id = null;
    try {
      const command = JSON.parse(line);
      id = command.id;
      const op = ops[command.op];
      if (!op) throw new Error(`unknown op ${command.op}`);
      const value = await op(command);
      process.stdout.write(JSON.stringify({ id, ok: true, value: value ?? null }) + '\n');
    } catch (e) {
      process.stdout.write(JSON.stringify({ id, ok: false, error: String(e && e.message || e) }) + '\n');
    }
  });
});
lines.on('close', () => { chain.then(() => browser.close()).then(() => process.exit(0)); });
console.log(JSON.stringify({ id: 0, ok: true, value: 'ready' }));
