"""The web page at ``/``: plain HTML + JavaScript, no build step, talking to the same app's ``/v1`` API.

Choose or drop a file; the page shows the model's input with the heat map (opacity slider) or the mask/boxes,
the probabilities as a bar chart and the model card. Server text is inserted with ``textContent`` only.
"""

from __future__ import annotations

from html import escape

_CSS = """
*{box-sizing:border-box}body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1b1e23;
background:#f6f7f9}header{background:#1f3a5f;color:#fff;padding:12px 24px;display:flex;gap:16px;align-items:center;
flex-wrap:wrap}header h1{font-size:18px;margin:0}header select,header input{font-size:14px;padding:4px}
main{display:grid;grid-template-columns:minmax(320px,1fr) minmax(320px,1fr);gap:16px;padding:16px 24px}
@media (max-width:800px){main{grid-template-columns:1fr}}
section{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:14px}h2{font-size:15px;margin:0 0 10px}
#drop{border:2px dashed #8a96a8;border-radius:8px;padding:22px;text-align:center;color:#4a5568;cursor:pointer}
#drop.over{background:#e8f0fb;border-color:#2b6cb0}.row{display:flex;gap:10px;align-items:center;margin:8px 0;
flex-wrap:wrap}.stack{position:relative;display:inline-block;background:#000;line-height:0}
.stack img{width:320px;max-width:100%;image-rendering:pixelated}.stack img+img{position:absolute;left:0;top:0;
image-rendering:auto}#answer{font-size:20px;font-weight:600;margin:6px 0}#error{color:#b42318;font-weight:600}
.bar{display:grid;grid-template-columns:140px 1fr 56px;gap:8px;align-items:center;font-size:13px;margin:3px 0}
.bar .track{background:#edf0f3;border-radius:3px;height:14px}.bar .fill{background:#2b6cb0;height:14px;
border-radius:3px}.bar.top .fill{background:#c05621}table{border-collapse:collapse;font-size:13px;width:100%}
td,th{border-bottom:1px solid #edf0f3;padding:3px 6px;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{width:34%}table{table-layout:fixed}section{min-width:0}header .muted{color:#c9d6e8}
.muted{color:#5b616b;font-size:12px}.notice{color:#8a5a00;font-size:12px}code{font-size:12px;word-break:break-all}
"""

_BODY = """
<header><h1>meddx</h1>
<label>model <select id="model"></select></label>
<label>heat map <select id="method"><option value="">none</option>{methods}</select></label>
<label id="token-box" hidden>token <input id="token" type="password" size="16"></label>
<span class="muted">research and teaching only &mdash; not a medical device</span></header>
<main>
<section><h2>Image</h2>
<div id="drop" tabindex="0">Drop an image here or <u>choose a file</u><br><span class="muted">{accepted}</span></div>
<input id="file" type="file" hidden>
<p id="error" role="alert"></p>
<div id="result" hidden>
<p id="answer"><span id="result-label"></span> <span class="muted">p =</span> <span id="result-prob"></span></p>
<div class="row"><div class="stack"><img id="input-img" alt="model input"><img id="overlay-img" alt=""></div></div>
<div class="row" id="opacity-row"><label>heat-map opacity
<input id="opacity" type="range" min="0" max="100" value="70"></label></div>
<div id="bars"></div><div id="notices"></div><p class="muted" id="runtime"></p>
<div class="row" id="pacs-row" hidden><button id="pacs-send" type="button">send to PACS</button>
<span class="muted" id="pacs-status"></span></div>
</div></section>
<section><h2>Model card</h2><div id="card">loading&hellip;</div></section>
</main>
"""

_JS = r"""
const $ = (id) => document.getElementById(id);
let cards = [];
const CARD_SKIP = ['headline', 'split', 'n', 'ci_level', 'n_bootstrap', 'runtime', 'checkpoint', 'epoch',
  'n_classes', 'threshold'];
function headers() {
  const t = $('token').value || sessionStorage.getItem('meddx-token') || '';
  return t ? {Authorization: 'Bearer ' + t} : {};
}
async function api(path, opts = {}) {
  const r = await fetch(path, {...opts, headers: {...headers(), ...(opts.headers || {})}});
  let body = null;
  try { body = await r.json(); } catch (e) { body = {detail: r.status + ' ' + r.statusText}; }
  if (r.status === 401) { $('token-box').hidden = false; }
  if (!r.ok) throw new Error((body && body.detail) || ('HTTP ' + r.status));
  return body;
}
function el(tag, text, cls) { const e = document.createElement(tag); if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls; return e; }
function row(table, k, v) { const tr = el('tr'); tr.append(el('th', k), el('td', v)); table.append(tr); }
function fmt(v) {
  if (typeof v === 'number') return Number.isInteger(v) ? String(v) : v.toFixed(4).replace(/0+$/, '');
  if (Array.isArray(v)) return '[' + v.map(fmt).join(', ') + ']';
  return v && typeof v === 'object' ? JSON.stringify(v) : String(v);
}
function showCard() {
  const c = cards.find((m) => m.name === $('model').value); const box = $('card'); box.replaceChildren();
  if (!c) return;
  const t = el('table');
  row(t, 'name', c.name); row(t, 'task', c.task + (c.kind ? ' (' + c.kind + ')' : '')); row(t, 'model', c.model);
  row(t, 'classes', c.classes.join(', '));
  const i = c.input; row(t, 'input', i.channels + ' ch, ' + i.shape.join('x') + ', ' + i.dtype +
    (i.value_range ? ' ' + i.value_range.join('..') : ''));
  row(t, 'intensity mapping', fmt(i.intensity_mapping));
  const d = c.training_data; row(t, 'training data', d.name + (d.source ? ' - ' + d.source : '') +
    (d.n_train ? ' (train ' + d.n_train + ', val ' + d.n_val + ', test ' + d.n_test + ')' : ''));
  const m = c.test_metrics;
  if (m) {
    row(t, 'test set', (m.split || 'test') + ' split, n = ' + m.n + (m.n_bootstrap ? '; 95% CIs from ' +
      m.n_bootstrap + ' bootstrap resamples' : ''));
    for (const [k, v] of Object.entries(m)) { if (!k.endsWith('_ci') && !CARD_SKIP.includes(k)) row(t, 'test ' + k,
      fmt(v) + (m[k + '_ci'] ? '  (95% CI ' + m[k + '_ci'].map(fmt).join('-') + ')' : '')); }
  } else row(t, 'test metrics', 'none (run `meddx evaluate` on the run)');
  row(t, 'runtime', c.runtime); row(t, 'meddx', c.meddx_version);
  for (const f of c.files) row(t, f.name, 'sha256 ' + f.sha256);
  box.append(t, el('p', c.intended_use, 'muted'));
}
function showBars(probs, top) {
  const box = $('bars'); box.replaceChildren();
  for (const [name, p] of Object.entries(probs)) {
    const b = el('div', undefined, 'bar' + (name === top ? ' top' : '')); b.dataset.cls = name;
    const tr = el('div', undefined, 'track'); const f = el('div', undefined, 'fill');
    f.style.width = (100 * p).toFixed(1) + '%'; tr.append(f);
    b.append(el('span', name), tr, el('span', p.toFixed(3), 'pval')); box.append(b);
  }
}
function png(b64) { return b64 ? 'data:image/png;base64,' + b64 : ''; }
function show(res) {
  $('result').hidden = false;
  const top = res.label !== undefined ? res.label : (res.labels ? res.labels.join(', ') : '');
  $('result-label').textContent = top || (res.boxes ? res.boxes.length + ' boxes' : 'mask');
  $('result-prob').textContent = res.probability !== undefined ? res.probability.toFixed(4) : '';
  $('answer').dataset.probability = res.probability !== undefined ? String(res.probability) : '';
  if (res.probabilities) showBars(res.probabilities, res.label); else $('bars').replaceChildren();
  const ex = res.explanation || {};
  $('input-img').src = png(ex.image_png || res.image_png || res.mask_png || res.image_with_boxes_png);
  $('overlay-img').src = png(ex.heatmap_png); $('overlay-img').hidden = !ex.heatmap_png;
  $('opacity-row').hidden = !ex.heatmap_png; setOpacity();
  const n = $('notices'); n.replaceChildren(...(res.notices || []).map((t) => el('div', 'notice: ' + t, 'notice')));
  const what = ex.label ? '; heat map: ' + ex.label + ' for ' + ex.target : '';
  $('runtime').textContent = 'runtime ' + res.runtime + what;
}
function setOpacity() { $('overlay-img').style.opacity = $('opacity').value / 100; }
let lastFile = null;
async function sendToPacs() {
  if (!lastFile) return;
  const form = new FormData(); form.append('file', lastFile);
  $('pacs-status').textContent = 'sending…';
  const url = '/v1/models/' + encodeURIComponent($('model').value) + '/pacs';
  try {
    const r = await api(url, {method: 'POST', body: form});
    $('pacs-status').textContent = 'stored (de-identified): ' +
      Object.entries(r.stored).map(([k, v]) => v + ' ' + k).join(', ');
  } catch (e) { $('pacs-status').textContent = e.message; }
}
async function send(file) {
  lastFile = file; $('pacs-status').textContent = '';
  $('error').textContent = ''; $('result').hidden = true; document.body.dataset.state = 'busy';
  const form = new FormData(); form.append('file', file);
  const method = $('method').value;
  const q = method ? '?explain=' + encodeURIComponent(method) : '?image=true';
  const url = '/v1/models/' + encodeURIComponent($('model').value) + '/predict' + q;
  try { show(await api(url, {method: 'POST', body: form})); document.body.dataset.state = 'done'; }
  catch (e) { $('error').textContent = e.message; document.body.dataset.state = 'error'; }
}
async function load() {
  try { cards = (await api('/v1/models')).models; }
  catch (e) { $('card').textContent = e.message; return; }
  $('model').replaceChildren(...cards.map((c) => { const o = el('option', c.name); o.value = c.name; return o; }));
  showCard(); document.body.dataset.state = 'ready';
}
$('model').onchange = showCard; $('opacity').oninput = setOpacity; $('pacs-send').onclick = sendToPacs;
$('token').onchange = () => { sessionStorage.setItem('meddx-token', $('token').value); load(); };
const drop = $('drop');
drop.onclick = () => $('file').click(); drop.onkeydown = (e) => { if (e.key === 'Enter') $('file').click(); };
$('file').onchange = () => { if ($('file').files[0]) send($('file').files[0]); };
drop.ondragover = (e) => { e.preventDefault(); drop.classList.add('over'); };
drop.ondragleave = () => drop.classList.remove('over');
drop.ondrop = (e) => {
  e.preventDefault(); drop.classList.remove('over');
  if (e.dataTransfer.files[0]) send(e.dataTransfer.files[0]);
};
load();
"""


def page_html(pacs: bool = False) -> str:
    """The page, with the registered heat-map methods and accepted formats filled in; ``pacs``: offer "send to
    PACS" (the app was given a DICOMweb URL)."""
    from meddx.explain.methods import METHODS
    from meddx.serve.uploads import ACCEPTED

    options = "".join(f'<option value="{escape(m.name)}">{escape(m.label)}</option>' for m in METHODS.values())
    body = _BODY.replace("{methods}", options).replace("{accepted}", escape(ACCEPTED))
    if pacs:
        body = body.replace('<div class="row" id="pacs-row" hidden>', '<div class="row" id="pacs-row">')
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>meddx</title>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'><style>{_CSS}</style></head>"
            f"<body>{body}<script>{_JS}</script></body></html>\n")
