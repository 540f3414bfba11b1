// Drives the connect page in a real headless Chromium (Debian's /usr/bin/chromium through
// playwright-core): login link → Sign in → Connect demo → consent → connected.
// usage: node browser-e2e.mjs LOGIN_URL SCREENSHOT_DIR
import { chromium } from 'playwright-core';

const [link, shots] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage();
  await page.goto(link);
  // Start waiting before clicking: the redirect can finish before a later wait begins.
  await Promise.all([page.waitForURL(/\/connect$/), page.click('button[type=submit]')]);
  await page.screenshot({ path: `${shots}/1-connect.png` });
  await Promise.all([page.waitForURL(/\/demo\/oauth\/authorize/), page.click('form[action="/connect/demo"] button')]);
  await page.uncheck('input[value="demo.write"]');
  await page.screenshot({ path: `${shots}/2-consent.png` });
  await Promise.all([page.waitForURL(/\/connect\?connected=demo/), page.click('button[value=approve]')]);
  await page.screenshot({ path: `${shots}/3-connected.png` });
  const row = await page.textContent('table');
  console.log(JSON.stringify({ url: page.url(), row }));
} finally {
  await browser.close();
}
