// Shared by the browser scripts: lines from the Python test on stdin, and a headless
// Debian Chromium in a fresh profile (playwright-core, no downloaded browser).
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

const lines = createInterface({ input: process.stdin });
const incoming = [];
let wake = null;
lines.on("line", (line) => {
  incoming.push(line);
  if (wake) wake();
});

/** The next line the Python test wrote. */
export async function nextLine() {
  while (!incoming.length) await new Promise((resolve) => (wake = resolve));
  return incoming.shift();
}

/** A Chromium context in a new empty profile; close it with closeBrowser(). */
export async function launchBrowser() {
  const profile = mkdtempSync(join(tmpdir(), "wallaby-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  return { context, profile };
}

export async function closeBrowser({ context, profile }) {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
  lines.close();
}

/** Runs `check`, prints "OK" (or "FAIL <why>" with a failing exit code), closes the browser. */
export async function runCheck(browser, check) {
  try {
    await check();
    console.log("OK");
  } catch (error) {
    console.log(`FAIL ${error.message}`);
    process.exitCode = 1;
  } finally {
    await closeBrowser(browser);
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Throws (a failed check: runCheck prints "FAIL <what>: <detail>") unless `condition`. */
export function expect(condition, what, detail) {
  if (!condition) throw new Error(`${what}: ${JSON.stringify(detail)}`);
}

/** Copies the page's console and uncaught errors to stderr (the test's log). */
export function logPage(page) {
  page.on("console", (message) => console.error("[browser]", message.type(), message.text()));
  page.on("pageerror", (error) => console.error("[browser] pageerror", error.message));
  return page;
}

/**
 * PUT a document straight to the gateway as the user (not through a page); its new rev.
 * `to`: {base, db, user, password}, as the scripts' argv gives them.
 */
export async function putDirect({ base, db, user, password }, doc) {
  const url = `${base}/api/v1/db/${encodeURIComponent(db)}/docs/${encodeURIComponent(doc._id)}`;
  const answer = await fetch(url, { method: "PUT", body: JSON.stringify(doc), headers: {
    "Content-Type": "application/json",
    Authorization: `Basic ${Buffer.from(`${user}:${password}`).toString("base64")}` } });
  expect(answer.status === 201, "written", answer.status);
  return (await answer.json()).rev;
}
