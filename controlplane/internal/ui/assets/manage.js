// Teams, users, organizations, models and general_settings.
import { h, table, field, collect, dialog, confirmDialog, usd, when, list, budget } from './dom.js';
import { api, me, canWrite, isAdmin, notify } from './app.js';
import { showSecret } from './keys.js';

const limitSpecs = () => [
  { name: 'max_budget', label: 'Max budget (USD)', type: 'number', min: 0 },
  { name: 'soft_budget', label: 'Soft budget (USD)', type: 'number', min: 0 },
  { name: 'budget_duration', label: 'Budget period', placeholder: 'e.g. 30d' },
  { name: 'rpm_limit', label: 'Requests per minute', type: 'number', integer: true, min: 0 },
  { name: 'tpm_limit', label: 'Tokens per minute', type: 'number', integer: true, min: 0 },
  { name: 'max_parallel_requests', label: 'Max parallel requests', type: 'number', integer: true, min: 0 },
];

function withValues(specs, obj) { return specs.map(s => ({ ...s, value: obj[s.name] })); }

async function act(fn, okMsg, rerender) {
  try { await fn(); notify(okMsg); rerender(); } catch (e) { notify(e.message, 'error'); }
}

async function formDialog(title, specs, submitLabel, send) {
  return dialog(title, h('div', { class: 'form-grid' }, specs.map(field)), { submitLabel, onSubmit: form => send(collect(form, specs)) });
}

function head(id, title, ...actions) {
  return h('div', { class: 'page-head' }, h('h1', { id }, title), h('div', { class: 'head-actions' }, actions));
}

// ---- Teams

async function teamDetail(t, rerenderPage) {
  const info = await api('/team/info', { query: { team_id: t.team_id } });
  // After a member change: the page and this dialog show the new state.
  const ref = {};
  const rerender = () => { if (ref.el) ref.el.close(); rerenderPage(); teamDetail(t, rerenderPage); };
  const team = info.team_info;
  const myRole = (me().teams || {})[t.team_id];
  const manageMembers = canWrite() && (isAdmin() || myRole === 'admin');
  const memberCols = [
    { label: 'User', get: m => m.user_id },
    { label: 'Team role', get: m => m.role },
    { label: 'Spend / budget in team', get: m => budget(m.spend, m.max_budget_in_team) },
  ];
  if (manageMembers) memberCols.push({ label: 'Actions', get: m => h('div', { class: 'row-actions' },
    h('button', { type: 'button', 'aria-label': `Change role of ${m.user_id}`, onclick: async () => {
      const specs = [{ name: 'role', label: 'Team role', type: 'select', options: ['user', 'admin'], value: m.role },
        { name: 'max_budget_in_team', label: 'Budget in team (USD)', type: 'number', value: m.max_budget_in_team }];
      const ok = await formDialog(`Member ${m.user_id}`, specs, 'Save', b => api('/team/member_update', { method: 'POST', body: { team_id: t.team_id, user_id: m.user_id, ...b } }));
      if (ok) { notify('Member updated.'); rerender(); }
    } }, 'Edit'),
    h('button', { type: 'button', class: 'danger', 'aria-label': `Remove ${m.user_id}`, onclick: async () => {
      if (await confirmDialog('Remove member', `Remove ${m.user_id} from ${team.team_alias || t.team_id}?`, 'Remove')) {
        act(() => api('/team/member_delete', { method: 'POST', body: { team_id: t.team_id, user_id: m.user_id } }), 'Member removed.', rerender);
      }
    } }, 'Remove')) });
  const body = h('div', {},
    h('dl', { class: 'facts' },
      h('dt', {}, 'Team ID'), h('dd', {}, h('code', {}, team.team_id)),
      h('dt', {}, 'Models'), h('dd', {}, list(team.models)),
      h('dt', {}, 'Budget'), h('dd', {}, budget(team.spend, team.max_budget, team.soft_budget)),
      h('dt', {}, 'Member budget'), h('dd', {}, usd(team.team_member_budget)),
      h('dt', {}, 'Organization'), h('dd', {}, team.organization_id || '—')),
    h('h3', {}, 'Members'), table(memberCols, team.members_with_roles || [], 'Members'),
    manageMembers ? h('button', { type: 'button', onclick: async () => {
      const specs = [{ name: 'user_id', label: 'User ID', required: true }, { name: 'role', label: 'Team role', type: 'select', options: ['user', 'admin'], value: 'user' }];
      const ok = await formDialog('Add member', specs, 'Add member', b => api('/team/member_add', { method: 'POST', body: { team_id: t.team_id, member: { user_id: b.user_id, role: b.role } } }));
      if (ok) { notify('Member added.'); rerender(); }
    } }, 'Add member') : null,
    h('h3', {}, 'Keys in this team'),
    table([{ label: 'Alias', get: k => k.key_alias || '—' }, { label: 'Key', get: k => k.key_name }, { label: 'Owner', get: k => k.service_account ? 'service account' : k.user_id },
      { label: 'Spend', get: k => usd(k.spend) }, { label: 'Blocked', get: k => k.blocked ? 'yes' : 'no' }], info.keys || [], 'Team keys'));
  await dialog(`Team ${team.team_alias || team.team_id}`, body, { ref });
}

export const teams = {
  async render({ rerender }) {
    const rows = await api('/team/list');
    const admin = isAdmin() && canWrite();
    const specs = [
      { name: 'team_alias', label: 'Team name', required: true },
      { name: 'team_id', label: 'Team ID (optional)', help: 'Generated when empty.' },
      { name: 'organization_id', label: 'Organization ID' },
      { name: 'models', label: 'Models', type: 'list' },
      ...limitSpecs(),
      { name: 'team_member_budget', label: 'Budget per member (USD)', type: 'number', min: 0 },
    ];
    const cols = [
      { label: 'Team', get: t => h('button', { type: 'button', class: 'link', onclick: () => teamDetail(t, rerender) }, t.team_alias || t.team_id) },
      { label: 'Team ID', get: t => h('code', {}, t.team_id) },
      { label: 'Members', get: t => String((t.members_with_roles || []).length) },
      { label: 'Models', get: t => list(t.models) },
      { label: 'Spend / budget', get: t => budget(t.spend, t.max_budget, t.soft_budget) },
      { label: 'Status', get: t => t.blocked ? h('span', { class: 'tag bad' }, 'blocked') : h('span', { class: 'tag ok' }, 'active') },
    ];
    if (admin) cols.push({ label: 'Actions', get: t => h('div', { class: 'row-actions' },
      h('button', { type: 'button', 'aria-label': `Edit team ${t.team_alias || t.team_id}`, onclick: async () => {
        const es = withValues(specs.filter(s => s.name !== 'team_id'), t);
        const ok = await formDialog(`Edit team ${t.team_alias || t.team_id}`, es, 'Save', b => api('/team/update', { method: 'POST', body: { team_id: t.team_id, ...b } }));
        if (ok) { notify('Team updated.'); rerender(); }
      } }, 'Edit'),
      h('button', { type: 'button', onclick: () => act(() => api(t.blocked ? '/team/unblock' : '/team/block', { method: 'POST', body: { team_id: t.team_id } }), t.blocked ? 'Team unblocked.' : 'Team blocked.', rerender) }, t.blocked ? 'Unblock' : 'Block'),
      h('button', { type: 'button', class: 'danger', 'aria-label': `Delete team ${t.team_alias || t.team_id}`, onclick: async () => {
        if (await confirmDialog('Delete team', `Delete team ${t.team_alias || t.team_id} and its keys?`)) act(() => api('/team/delete', { method: 'POST', body: { team_ids: [t.team_id] } }), 'Team deleted.', rerender);
      } }, 'Delete')) });
    return h('section', { 'aria-labelledby': 'teams-title' },
      head('teams-title', 'Teams', admin ? h('button', { type: 'button', class: 'primary', id: 'new-team', onclick: async () => {
        const t = await formDialog('New team', specs, 'Create team', b => api('/team/new', { method: 'POST', body: b }));
        if (t) { notify(`Team ${t.team_alias} created (${t.team_id}).`); rerender(); }
      } }, 'New team') : null),
      table(cols, Array.isArray(rows) ? rows : [], 'Teams visible to you'));
  },
};

// ---- Users

const roles = ['internal_user', 'internal_user_viewer', 'proxy_admin', 'proxy_admin_viewer'];
const userState = { page: 1, role: '' };

export const users = {
  async render({ rerender }) {
    const res = await api('/user/list', { query: { page: userState.page, page_size: 50, role: userState.role } });
    const rows = res.users || [];
    const admin = isAdmin() && canWrite();
    const specs = [
      { name: 'user_id', label: 'User ID', help: 'Generated when empty.' },
      { name: 'user_alias', label: 'Name' },
      { name: 'user_email', label: 'Email', type: 'email' },
      { name: 'user_role', label: 'Role', type: 'select', options: roles, value: 'internal_user' },
      { name: 'models', label: 'Models', type: 'list' },
      ...limitSpecs(),
      { name: 'teams', label: 'Join teams', type: 'list' },
      { name: 'auto_create_key', label: 'Also create a personal key', type: 'bool', value: false, sendFalse: true },
    ];
    const cols = [
      { label: 'User', get: u => u.user_alias ? `${u.user_alias} (${u.user_id})` : u.user_id },
      { label: 'Email', get: u => u.user_email || '—' },
      { label: 'Role', get: u => u.user_role },
      { label: 'Teams', get: u => list(u.teams) },
      { label: 'Spend / budget', get: u => budget(u.spend, u.max_budget, u.soft_budget) },
      { label: 'Status', get: u => u.blocked ? h('span', { class: 'tag bad' }, 'blocked') : h('span', { class: 'tag ok' }, 'active') },
    ];
    if (admin) cols.push({ label: 'Actions', get: u => h('div', { class: 'row-actions' },
      h('button', { type: 'button', 'aria-label': `Edit user ${u.user_id}`, onclick: async () => {
        const es = withValues(specs.filter(s => !['user_id', 'teams', 'auto_create_key'].includes(s.name)), u);
        const ok = await formDialog(`Edit user ${u.user_id}`, es, 'Save', b => api('/user/update', { method: 'POST', body: { user_id: u.user_id, ...b } }));
        if (ok) { notify('User updated.'); rerender(); }
      } }, 'Edit'),
      h('button', { type: 'button', class: 'danger', 'aria-label': `Delete user ${u.user_id}`, onclick: async () => {
        if (await confirmDialog('Delete user', `Delete ${u.user_id} and its personal keys? Team service-account keys stay.`)) act(() => api('/user/delete', { method: 'POST', body: { user_ids: [u.user_id] } }), 'User deleted.', rerender);
      } }, 'Delete')) });
    const filter = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter users', onsubmit: ev => {
      ev.preventDefault(); userState.role = ev.target.elements.namedItem('role').value; userState.page = 1; rerender();
    } }, field({ name: 'role', label: 'Role', type: 'select', options: [['', 'Any'], ...roles.map(r => [r, r])], value: userState.role }), h('button', { type: 'submit' }, 'Apply filters'));
    const pages = Math.max(res.total_pages || 1, 1);
    return h('section', { 'aria-labelledby': 'users-title' },
      head('users-title', 'Users', admin ? h('button', { type: 'button', class: 'primary', id: 'new-user', onclick: async () => {
        const u = await formDialog('New user', specs, 'Create user', b => api('/user/new', { method: 'POST', body: b }));
        if (u) { if (u.key) await showSecret(`Personal key for ${u.user_id}`, u.key); notify(`User ${u.user_id} created.`); rerender(); }
      } }, 'New user') : null),
      filter, table(cols, rows, 'Users'),
      h('nav', { class: 'pager', 'aria-label': 'User pages' },
        h('button', { type: 'button', disabled: userState.page <= 1, onclick: () => { userState.page -= 1; rerender(); } }, 'Previous page'),
        ` Page ${userState.page} of ${pages} `,
        h('button', { type: 'button', disabled: userState.page >= pages, onclick: () => { userState.page += 1; rerender(); } }, 'Next page')));
  },
};

// ---- Organizations

export const orgs = {
  async render({ rerender }) {
    const rows = await api('/organization/list');
    const admin = isAdmin() && canWrite();
    const specs = [
      { name: 'organization_alias', label: 'Organization name', required: true },
      { name: 'organization_id', label: 'Organization ID (optional)' },
      { name: 'models', label: 'Models', type: 'list' },
      ...limitSpecs(),
    ];
    const cols = [
      { label: 'Organization', get: o => o.organization_alias || o.organization_id },
      { label: 'ID', get: o => h('code', {}, o.organization_id) },
      { label: 'Teams', get: o => String((o.teams || []).length) },
      { label: 'Members', get: o => (o.members || []).map(m => `${m.user_id} (${m.user_role})`).join(', ') || '—' },
      { label: 'Models', get: o => list(o.models) },
      { label: 'Spend / budget', get: o => budget(o.spend, o.max_budget, o.soft_budget) },
    ];
    if (admin) cols.push({ label: 'Actions', get: o => h('div', { class: 'row-actions' },
      h('button', { type: 'button', 'aria-label': `Edit organization ${o.organization_alias}`, onclick: async () => {
        const es = withValues(specs.filter(s => s.name !== 'organization_id'), o);
        const ok = await formDialog(`Edit ${o.organization_alias}`, es, 'Save', b => api('/organization/update', { method: 'POST', body: { organization_id: o.organization_id, ...b } }));
        if (ok) { notify('Organization updated.'); rerender(); }
      } }, 'Edit'),
      h('button', { type: 'button', 'aria-label': `Add member to ${o.organization_alias}`, onclick: async () => {
        const ms = [{ name: 'user_id', label: 'User ID', required: true }, { name: 'role', label: 'Role', type: 'select', options: ['internal_user', 'org_admin', 'internal_user_viewer'] }];
        const ok = await formDialog('Add member', ms, 'Add member', b => api('/organization/member_add', { method: 'POST', body: { organization_id: o.organization_id, member: { user_id: b.user_id, role: b.role } } }));
        if (ok) { notify('Member added.'); rerender(); }
      } }, 'Add member'),
      h('button', { type: 'button', class: 'danger', 'aria-label': `Delete organization ${o.organization_alias}`, onclick: async () => {
        if (await confirmDialog('Delete organization', `Delete ${o.organization_alias}?`)) act(() => api('/organization/delete', { method: 'POST', body: { organization_ids: [o.organization_id] } }), 'Organization deleted.', rerender);
      } }, 'Delete')) });
    return h('section', { 'aria-labelledby': 'orgs-title' },
      head('orgs-title', 'Organizations', admin ? h('button', { type: 'button', class: 'primary', onclick: async () => {
        const o = await formDialog('New organization', specs, 'Create organization', b => api('/organization/new', { method: 'POST', body: b }));
        if (o) { notify('Organization created.'); rerender(); }
      } }, 'New organization') : null),
      table(cols, Array.isArray(rows) ? rows : [], 'Organizations'));
  },
};

// ---- Models

export const models = {
  async render({ rerender }) {
    const res = await api('/model/info');
    const admin = isAdmin() && canWrite();
    const specs = (m = {}) => {
      const p = m.litellm_params || {}, i = m.model_info || {};
      return [
        { name: 'model_name', label: 'Public model name', required: true, value: m.model_name },
        { name: 'model', label: 'Upstream model', required: true, placeholder: 'openai/gpt-4o-mini', value: p.model },
        { name: 'api_base', label: 'Upstream base URL', placeholder: 'https://api.openai.com/v1', value: p.api_base },
        { name: 'api_key', label: 'Upstream credential', placeholder: 'os.environ/OPENAI_API_KEY', help: 'Never shown again; an os.environ/NAME reference resolves on each proxy.' },
        { name: 'input_cost_per_token', label: 'Input price (USD per token)', type: 'number', value: i.input_cost_per_token ?? p.input_cost_per_token },
        { name: 'output_cost_per_token', label: 'Output price (USD per token)', type: 'number', value: i.output_cost_per_token ?? p.output_cost_per_token },
        { name: 'access_groups', label: 'Access groups', type: 'list', value: i.access_groups },
        { name: 'mode', label: 'Mode', placeholder: 'chat, embedding, completion', value: i.mode },
      ];
    };
    const toBody = (b, id) => ({
      model_name: b.model_name,
      litellm_params: { model: b.model, api_base: b.api_base, api_key: b.api_key },
      model_info: { id, access_groups: b.access_groups, input_cost_per_token: b.input_cost_per_token, output_cost_per_token: b.output_cost_per_token, mode: b.mode },
    });
    const cols = [
      { label: 'Model', get: m => m.model_name },
      { label: 'Upstream', get: m => `${(m.litellm_params || {}).model || ''} ${(m.litellm_params || {}).api_base ? '@ ' + m.litellm_params.api_base : ''}` },
      { label: 'Input $/1M tokens', get: m => { const v = (m.model_info || {}).input_cost_per_token ?? (m.litellm_params || {}).input_cost_per_token; return v == null ? '—' : usd(v * 1e6); } },
      { label: 'Output $/1M tokens', get: m => { const v = (m.model_info || {}).output_cost_per_token ?? (m.litellm_params || {}).output_cost_per_token; return v == null ? '—' : usd(v * 1e6); } },
      { label: 'Access groups', get: m => list((m.model_info || {}).access_groups) },
      { label: 'Source', get: m => (m.model_info || {}).db_model ? 'API' : 'config file' },
    ];
    if (admin) cols.push({ label: 'Actions', get: m => (m.model_info || {}).db_model ? h('div', { class: 'row-actions' },
      h('button', { type: 'button', 'aria-label': `Edit model ${m.model_name}`, onclick: async () => {
        const ok = await formDialog(`Edit ${m.model_name}`, specs(m), 'Save', b => api('/model/update', { method: 'POST', body: toBody(b, m.model_info.id) }));
        if (ok) { notify('Model updated.'); rerender(); }
      } }, 'Edit'),
      h('button', { type: 'button', class: 'danger', 'aria-label': `Delete model ${m.model_name}`, onclick: async () => {
        if (await confirmDialog('Delete model', `Delete deployment ${m.model_name} (${m.model_info.id})?`)) act(() => api('/model/delete', { method: 'POST', body: { id: m.model_info.id } }), 'Model deleted.', rerender);
      } }, 'Delete')) : h('span', { class: 'hint' }, 'change it in the config file') });
    return h('section', { 'aria-labelledby': 'models-title' },
      head('models-title', 'Models', admin ? h('button', { type: 'button', class: 'primary', onclick: async () => {
        const ok = await formDialog('New model', specs(), 'Add model', b => api('/model/new', { method: 'POST', body: toBody(b) }));
        if (ok) { notify('Model added.'); rerender(); }
      } }, 'New model') : null),
      table(cols, res.data || [], 'Model deployments'));
  },
};

// ---- general_settings

export const settings = {
  async render({ rerender }) {
    const res = await api('/settings');
    const admin = isAdmin() && canWrite();
    const gs = res.general_settings || {};
    const rows = Object.keys(gs).sort().map(k => ({ k, v: gs[k] }));
    return h('section', { 'aria-labelledby': 'settings-title' },
      head('settings-title', 'Settings', admin ? h('button', { type: 'button', class: 'primary', onclick: async () => {
        const specs = [{ name: 'general_settings', label: 'general_settings to merge (JSON; a key set to null is removed)', type: 'json', rows: 10, value: '{\n}' }];
        const ok = await formDialog('Change general_settings', specs, 'Apply', b => api('/config/update', { method: 'POST', body: b }));
        if (ok) { notify('Settings updated.'); rerender(); }
      } }, 'Change settings') : null),
      h('p', { class: 'hint' }, `Effective general_settings (config file merged with API changes), updated ${when(res.updated_at)}.`),
      table([{ label: 'Setting', get: r => h('code', {}, r.k) }, { label: 'Value', get: r => h('pre', {}, JSON.stringify(r.v, null, 2)) }], rows, 'general_settings'));
  },
};
