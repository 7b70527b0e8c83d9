// Tollgate admin UI: session, API access and routing. Pages live in their
// own modules; each exports render(ctx) returning a Node.
import { h, clear } from './dom.js';
import * as keys from './keys.js';
import * as manage from './manage.js';
import * as spend from './spend.js';

const state = { me: null };

export class APIError extends Error {
  constructor(status, body) {
    const e = body && body.error ? body.error : {};
    super(e.message || (body && body.detail) || `request failed (${status})`);
    this.status = status;
    this.param = e.param;
  }
}

// api calls the management API through /ui/api (the server adds the
// session's credential). State-changing calls carry the CSRF token.
export async function api(path, { method = 'GET', body, query } = {}) {
  let url = '/ui/api' + path;
  if (query) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
    const s = q.toString();
    if (s) url += '?' + s;
  }
  const headers = { Accept: 'application/json' };
  if (method !== 'GET') {
    headers['Content-Type'] = 'application/json';
    headers['X-Tollgate-CSRF'] = state.me ? state.me.csrf_token : '';
  }
  const res = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: 'same-origin', cache: 'no-store' });
  let data = null;
  const text = await res.text();
  if (text) { try { data = JSON.parse(text); } catch { data = null; } }
  if (res.status === 401 && path !== '/key/info') {
    // The session ended (or its key stopped working): back to sign-in.
    if (state.me) { state.me = null; showSignIn('Your session ended; sign in again.'); }
  }
  if (!res.ok) throw new APIError(res.status, data);
  return data;
}

export function me() { return state.me; }
export function canWrite() { return state.me && state.me.user_role !== 'proxy_admin_viewer' && state.me.user_role !== 'internal_user_viewer'; }
export function isAdmin() { return !!(state.me && state.me.is_admin); }

export function notify(msg, kind = 'ok') {
  const s = document.getElementById('status');
  s.className = 'status ' + kind;
  s.textContent = msg;
  if (kind === 'ok') setTimeout(() => { if (s.textContent === msg) s.textContent = ''; }, 6000);
}

const pages = [
  { path: 'keys', label: 'Keys', mod: keys, show: () => true },
  { path: 'teams', label: 'Teams', mod: manage.teams, show: () => true },
  { path: 'users', label: 'Users', mod: manage.users, show: () => state.me.reads_all },
  { path: 'organizations', label: 'Organizations', mod: manage.orgs, show: () => state.me.reads_all },
  { path: 'models', label: 'Models', mod: manage.models, show: () => true },
  { path: 'settings', label: 'Settings', mod: manage.settings, show: () => state.me.reads_all },
  { path: 'spend', label: 'Spend', mod: spend.spendPage, show: () => true },
  { path: 'audit', label: 'Audit log', mod: spend.auditPage, show: () => state.me.is_admin },
  { path: 'proxies', label: 'Proxies', mod: spend.proxiesPage, show: () => state.me.reads_all },
];

function visiblePages() { return pages.filter(p => p.show()); }

function renderNav(current) {
  const nav = document.getElementById('nav');
  clear(nav);
  nav.append(h('ul', {}, visiblePages().map(p => h('li', {},
    h('a', { href: '#/' + p.path, 'aria-current': p.path === current ? 'page' : undefined }, p.label)))));
  nav.hidden = false;
}

let renderSeq = 0;
async function route() {
  if (!state.me) return;
  const path = (location.hash.replace(/^#\/?/, '').split('?')[0]) || 'keys';
  const page = visiblePages().find(p => p.path === path) || visiblePages()[0];
  renderNav(page.path);
  const view = document.getElementById('view');
  const seq = ++renderSeq;
  document.title = `${page.label} · Tollgate admin`;
  let node;
  try {
    node = await page.mod.render({ api, notify, rerender: route });
  } catch (e) {
    node = h('p', { class: 'error', role: 'alert' }, e.message || String(e));
  }
  if (seq !== renderSeq) return;
  clear(view).append(node);
  const h1 = view.querySelector('h1');
  if (h1 && document.activeElement === document.body) h1.setAttribute('tabindex', '-1');
}

function showSignIn(msg) {
  document.getElementById('signin-view').hidden = false;
  document.getElementById('nav').hidden = true;
  document.getElementById('who').hidden = true;
  clear(document.getElementById('view'));
  document.getElementById('signin-error').textContent = msg || '';
  document.getElementById('credential').focus();
}

function signedIn(info) {
  state.me = info;
  document.getElementById('signin-view').hidden = true;
  const who = document.getElementById('who');
  document.getElementById('who-name').textContent = `${info.master_key ? 'master key' : info.user_id} (${info.user_role})`;
  who.hidden = false;
  route();
}

async function start() {
  document.getElementById('signin-form').addEventListener('submit', async ev => {
    ev.preventDefault();
    const input = document.getElementById('credential');
    const err = document.getElementById('signin-error');
    err.textContent = '';
    const res = await fetch('/ui/session', {
      method: 'POST', credentials: 'same-origin', cache: 'no-store',
      headers: { 'Content-Type': 'application/json', 'X-Tollgate-CSRF': 'sign-in' },
      body: JSON.stringify({ credential: input.value }),
    });
    input.value = '';
    const data = await res.json().catch(() => null);
    if (!res.ok) { err.textContent = (data && data.error && data.error.message) || 'Sign-in failed.'; input.focus(); return; }
    if (!location.hash) location.hash = '#/keys';
    signedIn(data);
    document.getElementById('main').focus();
  });
  document.getElementById('signout').addEventListener('click', async () => {
    await fetch('/ui/session/logout', { method: 'POST', credentials: 'same-origin', headers: { 'X-Tollgate-CSRF': state.me ? state.me.csrf_token : '' } });
    state.me = null;
    // A fresh page: nothing of the previous session stays in memory.
    location.replace('/ui/');
  });
  window.addEventListener('hashchange', () => { route().then(() => document.getElementById('main').focus()); });
  const res = await fetch('/ui/session', { credentials: 'same-origin', cache: 'no-store' });
  if (res.ok) signedIn(await res.json());
  else showSignIn('');
}

start();
