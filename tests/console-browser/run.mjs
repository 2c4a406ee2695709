// Drives Debian's Chromium (headless, through npm playwright-core) through
// the staff console of a daemon that the Rust test `console::figures::browser`
// started in-process with a manual clock. Lines on stdout that are
// commands (`handoff`, `photo`, `clock SECONDS`) are answered on stdin with
// `ok NOW` (the daemon's time, epoch seconds): the test posts the signed
// webhook or moves the clock. Every other line is a log line. Exits 0 only
// when every step passed. Screenshots: inbox, conversation (with the
// patient's photo), sign-in page, dashboard and patient page (as an admin).
import { chromium } from "playwright-core";
import { createHmac } from "node:crypto";
import { createRequire } from "node:module";
import readline from "node:readline";
import path from "node:path";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const base = env("CONSOLE_URL");
const staff = env("STAFF");
const password = env("PASSWORD");
const secret = Buffer.from(env("TOTP_HEX"), "hex");
const admin = env("ADMIN");
const adminSecret = Buffer.from(env("ADMIN_TOTP_HEX"), "hex");
const shots = env("SHOTS");
let now = Number(env("NOW"));

const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function ask(cmd) {
  console.log(cmd);
  const { value, done } = await lines.next();
  if (done || !value.startsWith("ok ")) throw new Error(`no answer to ${cmd}`);
  now = Number(value.slice(3));
}

// RFC 6238: HMAC-SHA1 over the 30-second step, 6 digits.
function totp(at, key = secret) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(at / 30)));
  const h = createHmac("sha1", key).update(counter).digest();
  const o = h[h.length - 1] & 15;
  return String((h.readUInt32BE(o) & 0x7fffffff) % 1000000).padStart(6, "0");
}

function check(ok, what) {
  if (!ok) throw new Error(`failed: ${what}`);
  console.log(`passed: ${what}`);
}

const axePath = createRequire(import.meta.url).resolve("axe-core/axe.min.js");
async function accessible(page, name) {
  await page.addScriptTag({ path: axePath });
  const result = await page.evaluate(async () => await window.axe.run());
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  for (const v of bad) console.log(`axe ${name}: ${v.impact} ${v.id}: ${v.help}`);
  check(bad.length === 0, `no serious or critical axe-core violations on ${name}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox"],
});
try {
  // The self-signed certificate is checked by the Rust tests; axe-core is
  // injected as a script, which the console's CSP would refuse.
  const context = await browser.newContext({
    ignoreHTTPSErrors: true,
    bypassCSP: true,
    locale: "en-GB",
    viewport: { width: 1024, height: 768 },
  });
  const page = await context.newPage();

  async function signIn(code, name = staff) {
    await page.goto(`${base}/login`);
    await page.fill("#name", name);
    await page.fill("#password", password);
    await page.fill("#code", code);
    await Promise.all([page.waitForNavigation(), page.click("main button[type=submit]")]);
  }

  // The first sign-in by keyboard only: Tab into each field, Enter sends.
  await page.goto(`${base}/login`);
  await page.keyboard.press("Tab");
  check(await page.evaluate(() => document.activeElement.id === "name"), "Tab reaches the name field first");
  await page.keyboard.type(staff);
  await page.keyboard.press("Tab");
  await page.keyboard.type(password);
  await page.keyboard.press("Tab");
  await page.keyboard.type(totp(now));
  await Promise.all([page.waitForNavigation(), page.keyboard.press("Enter")]);
  check(page.url() === `${base}/`, "signed in with password and TOTP, by keyboard");
  check((await page.textContent("#inbox")).includes("Nobody is waiting"), "the inbox is empty");

  // A patient asks for a person while the inbox is open: it appears
  // without anyone reloading.
  await ask("handoff");
  await page.waitForSelector('#inbox a[href^="/c/"]', { timeout: 10000 });
  check(true, "the hand-off appeared in the open inbox");
  await page.screenshot({ path: path.join(shots, "inbox.png"), fullPage: true });
  await accessible(page, "the inbox");

  await Promise.all([page.waitForNavigation(), page.click('#inbox a[href^="/c/"]')]);
  check((await page.textContent("main")).includes("I need to talk to someone"), "the conversation shows the message");
  // The patient sends a photo: shown in the conversation once fetched.
  await ask("photo");
  for (let n = 0; n < 100 && (await page.locator("main figure img").count()) === 0; n++) {
    await page.waitForTimeout(100);
    await page.reload();
  }
  // The element is there before its picture has loaded: wait for the load.
  await page
    .waitForFunction(() => {
      const el = document.querySelector("main figure img");
      return el && el.complete && el.naturalWidth > 0;
    }, null, { timeout: 10000 })
    .catch(() => {});
  const shown = await page
    .locator("main figure img")
    .evaluate((el) => el.complete && el.naturalWidth === 24);
  check(shown, "the patient's photo is shown in the conversation");
  await page.screenshot({ path: path.join(shots, "conversation.png"), fullPage: true });
  await accessible(page, "the conversation");
  await page.fill("#text", "ZZ staff: a reply from the browser");
  await Promise.all([page.waitForNavigation(), page.click('form[action$="/reply"] button')]);
  check((await page.textContent("main")).includes("ZZ staff: a reply from the browser"), "the reply is in the conversation");

  const forged = await page.evaluate(async () => {
    const r = await fetch(`${location.pathname}/reply`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: "text=ZZ+forged",
    });
    return r.status;
  });
  check(forged === 403, "a form posted without the CSRF token is refused");

  await Promise.all([page.waitForNavigation(), page.click("header button")]);
  check(page.url() === `${base}/login`, "signed out");
  await page.screenshot({ path: path.join(shots, "login.png"), fullPage: true });
  await accessible(page, "the sign-in page");

  // The idle timeout: the open inbox goes to the sign-in page by itself.
  await ask("clock 60");
  await signIn(totp(now));
  check(page.url() === `${base}/`, "signed in again");
  await ask("clock 960");
  await page.waitForURL(`${base}/login`, { timeout: 20000 });
  check(true, "16 idle minutes signed the open inbox out");

  // Five wrong codes lock the account.
  for (let n = 0; n < 5; n++) {
    await signIn("000000");
  }
  const alert = await page.textContent(".alert");
  check(alert.includes("locked"), "five wrong codes locked the account");
  await ask("clock 60");
  await signIn(totp(now));
  check(page.url() === `${base}/login`, "the right code no longer opens a locked account");

  // The admin's dashboard: the figures of this run (one hand-off answered),
  // on a tablet-sized screen.
  await signIn(totp(now, adminSecret), admin);
  check(page.url() === `${base}/`, "the admin signed in");
  await page.setViewportSize({ width: 800, height: 1024 });
  await Promise.all([page.waitForNavigation(), page.click('header a[href="/admin"]')]);
  const main = await page.textContent("main");
  check(main.includes("The last 30 days") && main.includes("first replies: 1"), "the dashboard shows the run's staff reply");
  check((await page.locator("svg.chart").count()) === 4, "the dashboard draws four charts");
  await page.screenshot({ path: path.join(shots, "dashboard.png"), fullPage: true });
  await accessible(page, "the dashboard");

  // Patient lookup: exact MRN, the patient's page, an opt-out on the
  // patient's verbal request.
  await Promise.all([page.waitForNavigation(), page.click('header a[href="/p"]')]);
  await page.fill("#q", "CARE001");
  await Promise.all([page.waitForNavigation(), page.click("main form button[type=submit]")]);
  check(/\/p\/[0-9a-f]{32}$/.test(page.url()), "the MRN finds the patient");
  await Promise.all([page.waitForNavigation(), page.click('form.consent button[value="out"]')]);
  const consentNow = await page.textContent("#consent-now");
  check(/opted out/i.test(consentNow), "the verbal opt-out is recorded");
  await page.screenshot({ path: path.join(shots, "lookup.png"), fullPage: true });
  await accessible(page, "the patient page");

  // German, by the browser's language.
  const german = await browser.newContext({ ignoreHTTPSErrors: true, locale: "de-DE" });
  const de = await german.newPage();
  await de.goto(`${base}/login`);
  check((await de.getAttribute("html", "lang")) === "de" && (await de.textContent("h1")) === "Anmelden", "German for a German browser");
  await german.close();
  console.log("browser test: all passed");
} catch (e) {
  console.log(`browser test failed: ${e.stack || e}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
// stdin (the test's answers) would keep node running.
process.exit(process.exitCode ?? 0);
