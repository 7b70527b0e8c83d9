// Drives the control plane's admin UI in Debian's headless Chromium with
// playwright-core (no bundled browser): the flow of issue 9's "How it will
// be checked". Run by deploy/e2e/ui_test.go, which starts the control plane,
// a proxy and a fake upstream and passes them in the environment:
//   CP_URL, MASTER_KEY, PROXY_URL, USER_KEY (an internal_user's own key),
//   VIEWER_KEY (a proxy_admin_viewer's key), GONE_PROXY (the id of a proxy that
//   connected and stopped),
//   CHROMIUM, ARTIFACTS (screenshot directory).
// It prints progress lines and "ok" at the end; never a key.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';

const env = name => { const v = process.env[name]; if (!v) throw new Error(`${name} is not set`); return v; };
const CP = env('CP_URL'), PROXY = env('PROXY_URL'), MASTER = env('MASTER_KEY'), USER_KEY = env('USER_KEY');
const ARTIFACTS = env('ARTIFACTS');
const started = Date.now();
const step = msg => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${msg}`);

async function until(what, fn, timeoutMs = 15000, everyMs = 200) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try { const v = await fn(); if (v) return v; } catch (e) { last = e; }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? ': ' + last.message : ''}`);
    await new Promise(r => setTimeout(r, everyMs));
  }
}

async function chat(key) {
  const res = await fetch(`${PROXY}/v1/chat/completions`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hello from the admin UI test' }], user: 'ui-end-user' }),
  });
  await res.text();
  return res.status;
}

// Screenshots mask the once-shown secret: artifacts are kept, keys are not.
// assertLabelled fails when a form control has no label or a button no name.
async function assertLabelled(page, where) {
  const bad = await page.evaluate(() => [
    ...[...document.querySelectorAll('input, select, textarea')].filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map(e => `control ${e.name || e.id}`),
    ...[...document.querySelectorAll('button, a[href]')].filter(e => !(e.getAttribute('aria-label') || e.textContent.trim())).map(e => `${e.tagName} without a name`),
  ]);
  assert.deepEqual(bad, [], `unlabelled controls on ${where}`);
}

const shot = (page, name) => page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true, mask: [page.locator('#new-secret')] });

const profile = mkdtempSync(join(tmpdir(), 'tollgate-chromium-'));
const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: env('CHROMIUM'),
  headless: true,
  // Without the background-networking switches Chromium keeps calling
  // Google services, which a closed network answers with nothing.
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  viewport: { width: 1360, height: 900 },
  permissions: ['clipboard-read', 'clipboard-write'],
});
const errors = [];
try {
  await ctx.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: CP });
  const page = ctx.pages()[0] || await ctx.newPage();
  page.on('pageerror', e => errors.push(`pageerror: ${e.message}`));
  page.on('console', m => { if (m.type() === 'error') errors.push(`console: ${m.text()}`); });
  page.setDefaultTimeout(20000); // generous: CI runs this beside every other e2e test

  // ---- Security headers and the sign-in page, by keyboard.
  const resp = await page.goto(`${CP}/ui/`);
  const csp = resp.headers()['content-security-policy'] || '';
  assert.match(csp, /default-src 'self'/);
  assert.match(csp, /frame-ancestors 'none'/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  const cred = page.getByLabel('Master key or your own virtual key');
  await cred.waitFor();
  assert.equal(await page.getByRole('button', { name: 'Sign out' }).isVisible(), false, 'no Sign out before signing in');
  assert.equal(await page.getByRole('navigation', { name: 'Sections' }).isVisible(), false, 'no navigation before signing in');
  await shot(page, '01-sign-in');
  await until('focus on the credential field', () => page.evaluate(() => document.activeElement && document.activeElement.id === 'credential'));
  await page.keyboard.type(MASTER);
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { name: 'Keys', level: 1 }).waitFor();
  const stored = await page.evaluate(() => JSON.stringify({ ls: { ...localStorage }, ss: { ...sessionStorage }, cookie: document.cookie }));
  assert.ok(!stored.includes(MASTER), 'the credential must not be readable by the page');
  assert.equal(await page.evaluate(() => document.cookie), '', 'the session cookie must be HttpOnly');
  step('admin signed in (keyboard), credential not visible to scripts');

  // ---- Create a team.
  await page.getByRole('link', { name: 'Teams' }).click();
  await page.getByRole('heading', { name: 'Teams', level: 1 }).waitFor();
  await page.getByRole('button', { name: 'New team' }).click();
  await page.getByLabel('Team name').fill('ui-team');
  await page.getByLabel('Max budget (USD)').fill('50');
  await page.getByLabel('Soft budget (USD)').fill('40');
  await page.getByRole('button', { name: 'Create team' }).click();
  const teamRow = page.getByRole('row').filter({ hasText: 'ui-team' });
  await teamRow.waitFor();
  const teamID = (await teamRow.locator('code').first().textContent()).trim();
  assert.ok(teamID, 'team id shown');
  await shot(page, '02-teams');
  step(`team created: ${teamID}`);

  // ---- Create a service-account key for it and copy the secret.
  await page.getByRole('link', { name: 'Keys' }).click();
  await page.getByRole('button', { name: 'New service-account key' }).click();
  const dlg = page.getByRole('dialog');
  await dlg.getByLabel('Key alias').fill('ui-sa');
  await dlg.getByLabel('Team ID').fill(teamID);
  await dlg.getByLabel('Max budget (USD)').fill('5');
  const unlabelled = await dlg.evaluate(d => [...d.querySelectorAll('input, select, textarea')].filter(e => !e.labels || !e.labels.length).map(e => e.name));
  assert.deepEqual(unlabelled, [], 'every control of the create-key form has a label');
  await dlg.getByRole('button', { name: 'Create key' }).click();
  const secretBox = page.locator('#new-secret');
  await secretBox.waitFor();
  await page.getByText('It is shown only once').waitFor();
  const shown = (await secretBox.textContent()).trim();
  await page.getByRole('button', { name: 'Copy key' }).click();
  await page.getByText('Copied to the clipboard.').waitFor();
  const secret = await page.evaluate(() => navigator.clipboard.readText());
  assert.equal(secret, shown, 'the clipboard holds the key shown');
  assert.match(secret, /^sk-/);
  await shot(page, '03-new-key-secret');
  await page.getByRole('dialog').getByRole('button', { name: 'Close' }).click();
  await page.getByRole('row').filter({ hasText: 'ui-sa' }).waitFor();
  step('service-account key created; secret copied from the clipboard');

  // ---- Use it through the proxy.
  await until('the proxy to accept the new key', async () => (await chat(secret)) === 200, 20000, 50);
  step('proxy accepted the key (200)');

  // ---- See the request in the spend view.
  await page.getByRole('link', { name: 'Spend' }).click();
  await page.getByRole('heading', { name: 'Spend', level: 1 }).waitFor();
  await until('the request in the spend logs', async () => {
    await page.getByRole('link', { name: 'Spend' }).click();
    await page.reload();
    await page.getByRole('heading', { name: 'Spend logs' }).waitFor();
    if ((await page.getByRole('table', { name: 'Spend logs' }).getByRole('row').filter({ hasText: teamID }).count()) === 0) return false;
    // (The charts' report is read just before the logs; see below.)
    return page.locator('figure.chart canvas').first().waitFor({ timeout: 2000 }).then(() => true, () => false);
  }, 40000, 500);
  await page.getByRole('figure', { name: 'Spend per team' }).waitFor();
  await shot(page, '04-spend');
  step('request visible in the spend view, charts drawn');

  // ---- Other admin pages (screenshots).
  for (const [name, heading] of [['users', 'Users'], ['organizations', 'Organizations'], ['models', 'Models'], ['settings', 'Settings'], ['audit', 'Audit log'], ['proxies', 'Proxies']]) {
    await page.getByRole('link', { name: heading, exact: true }).click();
    await page.getByRole('heading', { name: heading, level: 1 }).waitFor();
    if (name === 'proxies') {
      const proxies = page.getByRole('table', { name: 'Proxies' });
      await proxies.getByRole('row').filter({ hasText: 'current' }).waitFor();
      await proxies.getByRole('row').filter({ hasText: env('GONE_PROXY') }).filter({ hasText: 'disconnected' }).waitFor();
    }
    if (name === 'audit') await page.getByRole('row').filter({ hasText: 'ui-team' }).first().waitFor().catch(() => {});
    await assertLabelled(page, name);
    await shot(page, `05-${name}`);
  }
  step('admin pages rendered');

  // ---- Admin writes on the other pages.
  const dialogDone = async () => { await page.getByRole('dialog').waitFor({ state: 'detached' }); };
  await page.getByRole('link', { name: 'Models', exact: true }).click();
  await page.getByRole('button', { name: 'New model' }).click();
  let d = page.getByRole('dialog');
  await d.getByLabel('Public model name').fill('ui-model');
  await d.getByLabel('Upstream model').fill('openai/gpt-4o-mini');
  await d.getByLabel('Upstream base URL').fill('http://127.0.0.1:9/v1');
  await d.getByLabel('Upstream credential').fill('os.environ/UPSTREAM_API_KEY');
  await d.getByLabel('Input price (USD per token)').fill('0.000001');
  await d.getByLabel('Access groups').fill('ui-group');
  await d.getByRole('button', { name: 'Add model' }).click();
  await dialogDone();
  await page.getByRole('row').filter({ hasText: 'ui-model' }).filter({ hasText: 'ui-group' }).waitFor();

  await page.getByRole('link', { name: 'Users', exact: true }).click();
  await page.getByRole('button', { name: 'New user' }).click();
  d = page.getByRole('dialog');
  await d.getByLabel('User ID').fill('ui-made');
  await d.getByLabel('Role').selectOption('internal_user_viewer');
  await d.getByRole('button', { name: 'Create user' }).click();
  await dialogDone();
  await page.getByRole('row').filter({ hasText: 'ui-made' }).filter({ hasText: 'internal_user_viewer' }).waitFor();

  await page.getByRole('link', { name: 'Organizations', exact: true }).click();
  await page.getByRole('button', { name: 'New organization' }).click();
  await page.getByRole('dialog').getByLabel('Organization name').fill('ui-org');
  await page.getByRole('dialog').getByRole('button', { name: 'Create organization' }).click();
  await dialogDone();
  await page.getByRole('row').filter({ hasText: 'ui-org' }).waitFor();

  await page.getByRole('link', { name: 'Teams', exact: true }).click();
  await page.getByRole('button', { name: 'ui-team', exact: true }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Add member' }).click();
  d = page.getByRole('dialog', { name: 'Add member' });
  await d.getByLabel('User ID').fill('ui-made');
  await d.getByLabel('Team role').selectOption('admin');
  await d.getByRole('button', { name: 'Add member' }).click();
  await page.getByRole('dialog', { name: 'Add member' }).waitFor({ state: 'detached' });
  // The team dialog reopens with the new member.
  await page.getByRole('dialog').getByRole('row').filter({ hasText: 'ui-made' }).filter({ hasText: 'admin' }).waitFor();
  await shot(page, '05-team-detail');
  await page.keyboard.press('Escape');
  await dialogDone();

  await page.getByRole('link', { name: 'Keys', exact: true }).click();
  await page.getByRole('button', { name: 'Edit mine-key' }).click();
  await page.getByRole('dialog').getByLabel('Requests per minute').fill('10');
  await page.getByRole('dialog').getByRole('button', { name: 'Save' }).click();
  await dialogDone();
  await page.getByRole('row').filter({ hasText: 'mine-key' }).filter({ hasText: '10 rpm' }).waitFor();
  await page.getByRole('button', { name: 'Regenerate mine-key' }).click();
  await page.getByRole('dialog').getByLabel('Grace period for the old secret').fill('1h');
  await page.getByRole('dialog').getByRole('button', { name: 'Regenerate' }).click();
  await page.locator('#new-secret').waitFor();
  await page.getByText('It is shown only once').waitFor();
  await page.getByRole('dialog').getByRole('button', { name: 'Close' }).click();
  await dialogDone();
  await page.getByRole('link', { name: 'Settings', exact: true }).click();
  await page.getByRole('button', { name: 'Change settings' }).click();
  await page.getByRole('dialog').getByRole('textbox').fill('{"ui_note": "set from the admin UI"}');
  await page.getByRole('dialog').getByRole('button', { name: 'Apply' }).click();
  await dialogDone();
  await page.getByRole('row').filter({ hasText: 'ui_note' }).filter({ hasText: 'set from the admin UI' }).waitFor();
  step('admin writes: model, user, organization, team member, key limits, regenerate, settings');

  // ---- Block the key in the UI; the proxy refuses it.
  await page.getByRole('link', { name: 'Keys' }).click();
  await page.getByRole('button', { name: 'Block ui-sa' }).click();
  await page.getByRole('row').filter({ hasText: 'ui-sa' }).getByText('blocked').waitFor();
  await until('the proxy to refuse the blocked key', async () => (await chat(secret)) === 401, 20000, 50);
  await shot(page, '06-keys-blocked');
  step('key blocked in the UI; proxy answers 401');

  // ---- Key filters (applied by the API).
  const adminKeys = page.getByRole('table', { name: 'Keys visible to you' });
  await page.getByLabel('Status').selectOption('blocked');
  await page.getByRole('button', { name: 'Apply filters' }).click();
  await until('only blocked keys', async () => {
    const aliases = await adminKeys.locator('tbody tr td[data-col="Alias"]').allTextContents();
    return aliases.length === 1 && aliases[0] === 'ui-sa';
  });
  await page.getByLabel('Status').selectOption('all');
  await page.getByLabel('Search').fill('mine');
  await page.getByLabel('Search').press('Enter');
  await until('search results', async () => {
    const aliases = await adminKeys.locator('tbody tr td[data-col="Alias"]').allTextContents();
    return aliases.length === 1 && aliases[0] === 'mine-key';
  });
  await page.getByLabel('Search').fill('');
  await page.getByRole('button', { name: 'Apply filters' }).click();
  step('key filters: status and search');

  await page.getByRole('button', { name: 'Sign out' }).click();
  await cred.waitFor();
  const after = await page.evaluate(() => fetch('/ui/api/key/list').then(r => r.status));
  assert.equal(after, 401, 'signed out: the API refuses the old session');
  step('signed out');

  // ---- An internal user sees only its own objects and no admin actions.
  await cred.fill(USER_KEY);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Keys', level: 1 }).waitFor();
  const nav = page.getByRole('navigation', { name: 'Sections' });
  for (const absent of ['Users', 'Organizations', 'Settings', 'Audit log', 'Proxies']) {
    assert.equal(await nav.getByRole('link', { name: absent, exact: true }).count(), 0, `internal user sees no ${absent} link`);
  }
  assert.equal(await page.getByRole('button', { name: 'New service-account key' }).count(), 0);
  const keysTable = page.getByRole('table', { name: 'Keys visible to you' });
  await keysTable.getByRole('row').filter({ hasText: 'mine-key' }).waitFor();
  const owners = await keysTable.locator('tbody tr td[data-col="Owner"]').allTextContents();
  assert.ok(owners.length >= 1 && owners.every(o => o === 'ui-user'), `only the user's own keys: ${JSON.stringify(owners)}`);
  assert.equal(await keysTable.getByText('ui-sa').count(), 0);
  assert.equal(await keysTable.getByText('other-key').count(), 0);
  await page.getByRole('button', { name: 'Regenerate ui-user-login' }).click();
  await page.getByRole('dialog').getByText('This is the key you signed in with').waitFor();
  await page.keyboard.press('Escape');
  await page.getByRole('dialog').waitFor({ state: 'detached' });
  await shot(page, '07-internal-user-keys');
  await page.getByRole('link', { name: 'Teams' }).click();
  await page.getByRole('heading', { name: 'Teams', level: 1 }).waitFor();
  assert.equal(await page.getByRole('button', { name: 'New team' }).count(), 0, 'no New team for an internal user');
  assert.equal(await page.getByRole('row').filter({ hasText: 'ui-team' }).count(), 0, 'foreign team hidden');
  // Direct API calls through the session are still refused by the API.
  const csrfStatus = await page.evaluate(() => fetch('/ui/api/team/new', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{"team_alias":"x"}' }).then(r => r.status));
  assert.equal(csrfStatus, 403, 'a write without the CSRF header is refused');
  await shot(page, '08-internal-user-teams');
  await until('the user\'s own request to pass the proxy', async () => (await chat(USER_KEY)) === 200, 20000, 50);
  await until('the user\'s own request in its spend view', async () => {
    await page.getByRole('link', { name: 'Spend' }).click();
    await page.reload();
    await page.getByRole('heading', { name: 'Spend logs' }).waitFor();
    if ((await page.getByRole('table', { name: 'Spend logs' }).getByRole('row').filter({ hasText: 'ui-user' }).count()) !== 1) return false;
    // The charts' report is read just before the logs: a spend applied in
    // between shows in the logs but not yet in the charts; reload then.
    return page.getByRole('figure', { name: 'Spend per user' }).locator('canvas').waitFor({ timeout: 2000 }).then(() => true, () => false);
  }, 40000, 500);
  await page.getByText('your own spend only').waitFor();
  assert.equal(await page.getByRole('table', { name: 'Spend logs' }).getByRole('row').filter({ hasText: teamID }).count(), 0, 'no foreign spend');
  await shot(page, '09-internal-user-spend');
  step('internal user: own keys only, no admin actions');

  // ---- Keyboard: create a key with Tab / Enter only.
  await assertLabelled(page, 'internal user pages');
  await page.getByRole('link', { name: 'Keys' }).click();
  const newKey = page.getByRole('button', { name: 'New key' });
  await newKey.waitFor();
  await page.locator('#main').focus();
  let reached = false;
  for (let i = 0; i < 40 && !reached; i++) {
    await page.keyboard.press('Tab');
    reached = await page.evaluate(() => document.activeElement && document.activeElement.id === 'new-key');
  }
  assert.ok(reached, 'New key is reachable with Tab');
  await page.keyboard.press('Enter');
  await page.getByRole('dialog').getByLabel('Key alias').waitFor();
  assert.equal(await page.evaluate(() => document.activeElement && document.activeElement.name), 'key_alias', 'the dialog focuses its first field');
  await page.keyboard.type('kbd-key');
  await page.keyboard.press('Enter');
  await page.locator('#new-secret').waitFor();
  await page.keyboard.press('Escape');
  await keysTable.getByRole('row').filter({ hasText: 'kbd-key' }).waitFor();
  step('keyboard-only key creation');
  await page.getByRole('button', { name: 'Delete kbd-key' }).click();
  await page.getByRole('dialog').getByText('This cannot be undone').waitFor();
  await page.getByRole('dialog').getByRole('button', { name: 'Delete' }).click();
  await keysTable.getByRole('row').filter({ hasText: 'kbd-key' }).waitFor({ state: 'detached' });
  step('key deleted after a confirmation');

  // ---- A proxy_admin_viewer reads everything and can change nothing.
  await page.getByRole('button', { name: 'Sign out' }).click();
  await cred.waitFor();
  await cred.fill(env('VIEWER_KEY'));
  await cred.press('Enter');
  await page.getByRole('heading', { name: 'Keys', level: 1 }).waitFor();
  await page.getByRole('table', { name: 'Keys visible to you' }).getByRole('row').filter({ hasText: 'ui-sa' }).waitFor();
  assert.equal(await page.getByRole('button', { name: /^(New key|New service-account key|Edit|Block|Delete)/ }).count(), 0, 'viewer has no write buttons');
  assert.equal(await nav.getByRole('link', { name: 'Audit log' }).count(), 0, 'viewer cannot read the audit log');
  await nav.getByRole('link', { name: 'Proxies' }).click();
  await page.getByRole('table', { name: 'Proxies' }).getByRole('row').filter({ hasText: 'current' }).waitFor();
  await nav.getByRole('link', { name: 'Users' }).click();
  await page.getByRole('row').filter({ hasText: 'ui-made' }).waitFor();
  assert.equal(await page.getByRole('button', { name: 'New user' }).count(), 0);
  await shot(page, '10-viewer-users');
  step('proxy_admin_viewer: reads everything, no write actions');

  assert.deepEqual(errors.filter(e => !e.includes('Failed to load resource')), [], 'no script errors or CSP violations');
  console.log('ok');
} catch (e) {
  try { const p = ctx.pages()[0]; if (p) await shot(p, 'failure'); } catch { /* best effort */ }
  console.error(e.stack || String(e));
  if (errors.length) console.error(errors.join('\n'));
  process.exitCode = 1;
} finally {
  await ctx.close();
  rmSync(profile, { recursive: true, force: true });
}
