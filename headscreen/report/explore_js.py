"""The report page's one script and its styles (inline: the page fetches nothing).

Progressive: with JavaScript off, the page is the static report (figures and tables); the script adds the
selectivity slider and the attention viewer inside each run's "Explore" block, and sorting and filtering
to the long tables. It reads each run's data from its <script type="application/json"> element with
JSON.parse and writes text only through textContent / fillText (never innerHTML), so a token cannot
inject markup.

Colours: the selectivity grids use magma on a log scale (as the static heatmaps); the attention pattern
is white (0) to dark blue (1), linear in the stored byte q = round(255·w): red = 255 − q, so that a test can
read the weight back from a pixel. Positions above the diagonal (key > query: masked) are grey.
"""

EXPLORE_CSS = """
.hs-explore .hs-controls { display: flex; flex-wrap: wrap; gap: .6rem 1.2rem; align-items: center; margin: .5rem 0; font-size: .9rem; }
.hs-explore label { white-space: nowrap; } .hs-explore select { max-width: 28rem; }
.hs-grids { display: flex; flex-wrap: wrap; gap: 1rem; }
.hs-grid table { border-collapse: separate; border-spacing: 1px; margin: .2rem 0; font-size: .7rem; }
.hs-grid td { width: 1.3rem; height: 1.1rem; padding: 0; border: 1px solid transparent; }
.hs-grid td.hs-hit { border: 2px solid #00c8e0; }
.hs-grid th { background: none; border: none; padding: 0 .2rem; font-weight: normal; color: #555; }
.hs-grid caption { font-size: .85rem; text-align: left; }
.hs-viewer { position: relative; } .hs-viewer canvas { border: 1px solid #ddd; cursor: crosshair; }
.hs-tip { position: absolute; pointer-events: none; background: #222; color: #fff; padding: .2rem .45rem;
          border-radius: 4px; font-size: .8rem; white-space: pre; display: none; z-index: 5; }
.hs-why { font-size: .85rem; color: #444; margin: .2rem 0 .5rem; }
.hs-filter { margin: .3rem 0; font-size: .85rem; } .hs-filter input { width: 16rem; }
table.hs-table th { cursor: pointer; user-select: none; }
table.hs-table th[data-dir="asc"]::after { content: " \\25B2"; } table.hs-table th[data-dir="desc"]::after { content: " \\25BC"; }
"""

EXPLORE_JS = r"""
(function () {
  'use strict';
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const k in (attrs || {})) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = String(text);
    return e;
  }
  function option(sel, value, text) { const o = el('option', {value: value}, text); sel.appendChild(o); return o; }
  function labelled(parent, text, control) { const l = el('label', {}, text + ' '); l.appendChild(control); parent.appendChild(l); return control; }
  function headName(l, h) { return 'L' + l + 'H' + h; }

  // ---- selectivity slider: one layer x head grid per class at the chosen checkpoint
  const MAGMA = [[0, 0, 4], [59, 15, 112], [140, 41, 129], [222, 73, 104], [254, 159, 109], [252, 253, 191]];
  function magma(t) {
    t = Math.min(1, Math.max(0, t)) * (MAGMA.length - 1);
    const i = Math.min(MAGMA.length - 2, Math.floor(t)), f = t - i, a = MAGMA[i], b = MAGMA[i + 1];
    return 'rgb(' + [0, 1, 2].map(j => Math.round(a[j] + f * (b[j] - a[j]))).join(',') + ')';
  }
  function initSlider(box, data) {
    const sel = data.selectivity, thr = data.thresholds['class'];
    const probes = Object.keys(sel.probes);
    const controls = el('div', {class: 'hs-controls'}); box.appendChild(controls);
    const probeSel = labelled(controls, 'Probe', el('select', {class: 'hs-sel-probe'}));
    probes.forEach(p => option(probeSel, p, p));
    if (data.probe && probes.includes(data.probe)) probeSel.value = data.probe;
    const slider = labelled(controls, 'Checkpoint', el('input', {type: 'range', min: 0, max: sel.steps.length - 1,
      step: 1, value: sel.steps.includes(data.step) ? sel.steps.indexOf(data.step) : sel.steps.length - 1, class: 'hs-sel-slider'}));
    const stepText = el('strong', {class: 'hs-sel-step'}); controls.appendChild(stepText);
    const play = el('button', {type: 'button', class: 'hs-sel-play'}, 'Play'); controls.appendChild(play);
    const legend = el('div', {class: 'hs-why hs-sel-legend'}); box.appendChild(legend);
    const grids = el('div', {class: 'hs-grids'}); box.appendChild(grids);
    let cells = {}, timer = null;
    function build() {
      grids.textContent = ''; cells = {};
      const classes = sel.probes[probeSel.value];
      for (const cls in classes) {
        const wrap = el('div', {class: 'hs-grid'}), table = el('table', {'data-class': cls});
        table.appendChild(el('caption', {}, cls === 'first' ? 'first token (BOS)' : cls));
        const head = el('tr'); head.appendChild(el('th'));
        for (let h = 0; h < sel.heads; h++) head.appendChild(el('th', {}, h));
        table.appendChild(head);
        cells[cls] = [];
        for (let l = 0; l < sel.layers; l++) {
          const tr = el('tr'); tr.appendChild(el('th', {}, 'L' + l));
          for (let h = 0; h < sel.heads; h++) { const td = el('td'); tr.appendChild(td); cells[cls].push(td); }
          table.appendChild(tr);
        }
        wrap.appendChild(table); grids.appendChild(wrap);
      }
      let lo = Infinity, hi = 100;
      for (const cls in classes) for (const row of classes[cls]) for (const v of row) if (v !== null && v > 0) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
      const vmin = Math.max(0.1, Math.min(1, lo === Infinity ? 1 : lo));
      cells._norm = v => (Math.log(Math.max(v, vmin)) - Math.log(vmin)) / (Math.log(hi) - Math.log(vmin));
      legend.textContent = 'Colour: log scale from ' + vmin.toPrecision(2) + '\u00d7 (black) to ' + hi.toPrecision(3)
        + '\u00d7 (pale yellow), over every checkpoint of this probe; outlined: \u2265 ' + thr + '\u00d7. Hover a cell for its value.';
      draw();
    }
    function draw() {
      const i = Number(slider.value), classes = sel.probes[probeSel.value];
      stepText.textContent = 'step ' + sel.steps[i] + ' (' + (i + 1) + ' of ' + sel.steps.length + ')';
      for (const cls in classes) {
        const row = classes[cls][i];
        cells[cls].forEach((td, j) => {
          const v = row[j], l = Math.floor(j / sel.heads), h = j % sel.heads;
          td.style.background = v === null ? '#eee' : magma(cells._norm(v));
          td.dataset.v = v === null ? '' : String(v);
          td.className = v !== null && v >= thr ? 'hs-hit' : '';
          td.title = headName(l, h) + ' ' + cls + ': ' + (v === null ? 'n/a' : v + '\u00d7') + ' at step ' + sel.steps[i];
        });
      }
    }
    probeSel.addEventListener('change', build);
    slider.addEventListener('input', draw);
    play.addEventListener('click', () => {
      if (timer) { clearInterval(timer); timer = null; play.textContent = 'Play'; return; }
      if (Number(slider.value) >= sel.steps.length - 1) slider.value = 0;
      play.textContent = 'Pause';
      timer = setInterval(() => {
        if (Number(slider.value) >= sel.steps.length - 1) { clearInterval(timer); timer = null; play.textContent = 'Play'; return; }
        slider.value = Number(slider.value) + 1; draw();
      }, 350);
    });
    build();
  }

  // ---- attention viewer: query x key pattern of one head on one probe row
  function bytesOf(b64) { const s = atob(b64), a = new Uint8Array(s.length); for (let i = 0; i < s.length; i++) a[i] = s.charCodeAt(i); return a; }
  function initViewer(box, data) {
    const att = data.attention, entries = att.entries;
    const controls = el('div', {class: 'hs-controls'}); box.appendChild(controls);
    const probeSel = labelled(controls, 'Probe', el('select', {class: 'hs-att-probe'}));
    const headSel = labelled(controls, 'Head', el('select', {class: 'hs-att-head'}));
    const stepSel = labelled(controls, 'Checkpoint', el('select', {class: 'hs-att-step'}));
    const rowSel = labelled(controls, 'Row', el('select', {class: 'hs-att-row'}));
    const why = el('div', {class: 'hs-why'}); box.appendChild(why);
    const viewer = el('div', {class: 'hs-viewer'}); box.appendChild(viewer);
    const canvas = el('canvas', {class: 'hs-att-canvas'}); viewer.appendChild(canvas);
    const tip = el('div', {class: 'hs-tip'}); viewer.appendChild(tip);
    Object.keys(att.probes).forEach(p => option(probeSel, p, p));
    // the repeated probe first: an induction head's stripe and a previous-token head's diagonal show on every row
    const first = (data.initial && data.initial.probe) || (att.probes.repeated ? 'repeated' : data.probe);
    if (first && att.probes[first]) probeSel.value = first;
    for (let r = 0; r < att.rows; r++) option(rowSel, r, 'row ' + r);
    const rank = w => /^induction/.test(w) ? 0 : /^previous/.test(w) ? 1 : /^bos/.test(w) ? 2 : 3;
    let cur = null;
    function heads() {
      const seen = new Map();
      for (const e of entries) if (e.probe === probeSel.value) {
        const k = headName(e.layer, e.head), r = Math.min(...e.why.map(rank));
        const prev = seen.get(k);
        if (!prev) seen.set(k, {key: k, rank: r, why: new Set(e.why)}); else { prev.rank = Math.min(prev.rank, r); e.why.forEach(w => prev.why.add(w)); }
      }
      return [...seen.values()].sort((a, b) => a.rank - b.rank || a.key.localeCompare(b.key, 'en', {numeric: true}));
    }
    function fillHeads() {
      const keep = headSel.value; headSel.textContent = '';
      for (const h of heads()) option(headSel, h.key, h.key + ' \u2014 ' + [...h.why].filter(w => !/emerged/.test(w)).join('; '));
      if ([...headSel.options].some(o => o.value === keep)) headSel.value = keep;
      fillSteps();
    }
    function fillSteps() {
      const keep = stepSel.value; stepSel.textContent = '';
      const mine = entries.filter(e => e.probe === probeSel.value && headName(e.layer, e.head) === headSel.value)
        .sort((a, b) => b.step - a.step);
      mine.forEach((e, i) => option(stepSel, e.step, 'step ' + e.step + (i === 0 ? ' (last)' : '') + (e.why.some(w => /emerged/.test(w)) ? ' (emergence)' : '')));
      if ([...stepSel.options].some(o => o.value === keep)) stepSel.value = keep;
      draw();
    }
    function draw() {
      const e = entries.find(x => x.probe === probeSel.value && headName(x.layer, x.head) === headSel.value && String(x.step) === stepSel.value);
      if (!e) return;
      const p = att.probes[e.probe], T = p.seq_len, row = Number(rowSel.value), text = p.text[row];
      const q8 = bytesOf(e.rows[row]);
      const cell = Math.max(3, Math.min(14, Math.floor(768 / T))), font = Math.min(cell, 11), every = Math.ceil(6 / cell);
      const ml = 92, mt = 92;
      canvas.width = ml + T * cell + 2; canvas.height = mt + T * cell + 2;
      Object.assign(canvas.dataset, {ml: ml, mt: mt, cell: cell, t: T});
      const ctx = canvas.getContext('2d');
      ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, canvas.width, canvas.height);
      let idx = 0;
      for (let q = 0; q < T; q++) {
        for (let k = 0; k < T; k++) {
          if (k <= q) { const v = q8[idx++]; ctx.fillStyle = 'rgb(' + (255 - v) + ',' + (255 - Math.round(v * 0.7)) + ',' + (255 - Math.round(v * 0.25)) + ')'; }
          else ctx.fillStyle = '#f0f0f0';
          ctx.fillRect(ml + k * cell, mt + q * cell, cell, cell);
        }
      }
      ctx.fillStyle = '#333'; ctx.font = font + 'px monospace'; ctx.textBaseline = 'middle';
      const short = s => { s = s.replace(/\s/g, '\u00b7'); return s.length > 10 ? s.slice(0, 9) + '\u2026' : s; };
      for (let i = 0; i < T; i += every) {
        ctx.textAlign = 'right'; ctx.fillText(short(text[i]), ml - 3, mt + i * cell + cell / 2);
        ctx.save(); ctx.translate(ml + i * cell + cell / 2, mt - 3); ctx.rotate(-Math.PI / 2);
        ctx.textAlign = 'left'; ctx.fillText(short(text[i]), 0, 0); ctx.restore();
      }
      ctx.font = '11px sans-serif'; ctx.textAlign = 'left';
      ctx.fillText('key (source) \u2192', 2, 10); ctx.fillText('query (destination) \u2193', 2, 24);
      const qp = p.query_pos ? p.query_pos[row] : null, ap = p.a_pos ? p.a_pos[row] : null;
      why.textContent = headName(e.layer, e.head) + ' at step ' + e.step + ', ' + e.probe + ' probe row ' + row + ' (' + T + ' tokens)'
        + (qp !== null ? '; the screen scores query position ' + qp : '') + (ap !== null ? ', the earlier A of its pair is at ' + ap : '')
        + '. Why shown: ' + e.why.join('; ') + '.';
      cur = {q8: q8, T: T, text: text, cell: cell, ml: ml, mt: mt};
    }
    canvas.addEventListener('mousemove', ev => {
      if (!cur) return;
      const r = canvas.getBoundingClientRect();
      const k = Math.floor((ev.clientX - r.left - cur.ml) / cur.cell), q = Math.floor((ev.clientY - r.top - cur.mt) / cur.cell);
      if (q < 0 || k < 0 || q >= cur.T || k >= cur.T) { tip.style.display = 'none'; return; }
      const w = k <= q ? cur.q8[q * (q + 1) / 2 + k] / 255 : null;
      tip.textContent = 'destination (query) ' + q + ' ' + JSON.stringify(cur.text[q]) + '\nsource (key) ' + k + ' ' + JSON.stringify(cur.text[k])
        + '\nweight ' + (w === null ? 'masked (key after query)' : w.toFixed(3));
      tip.style.display = 'block';
      tip.style.left = (ev.clientX - r.left + 14) + 'px'; tip.style.top = (ev.clientY - r.top + 14) + 'px';
    });
    canvas.addEventListener('mouseleave', () => { tip.style.display = 'none'; });
    probeSel.addEventListener('change', fillHeads);
    headSel.addEventListener('change', fillSteps);
    stepSel.addEventListener('change', draw);
    rowSel.addEventListener('change', draw);
    fillHeads();
    const init = data.initial || {}, has = (sel, v) => [...sel.options].some(o => o.value === String(v));
    if (init.head && has(headSel, init.head)) { headSel.value = init.head; fillSteps(); }
    if (init.step !== null && init.step !== undefined && has(stepSel, init.step)) stepSel.value = String(init.step);
    if (init.row && has(rowSel, init.row)) rowSel.value = String(init.row);
    draw();
  }

  // ---- sortable, filterable long tables
  function cellValue(td) { const t = td.textContent.trim(), n = Number(t); return t !== '' && t !== '\u2013' && !isNaN(n) ? n : t.toLowerCase(); }
  function initTable(table) {
    const body = table.tBodies[0]; if (!body) return;
    const rows = [...body.rows], count = el('span', {}, ' ' + rows.length + ' rows');
    const box = el('div', {class: 'hs-filter'}), input = el('input', {type: 'search', placeholder: 'Filter rows (e.g. L1H3, induction)'});
    box.appendChild(input); box.appendChild(count); table.parentNode.insertBefore(box, table);
    input.addEventListener('input', () => {
      const words = input.value.toLowerCase().split(/\s+/).filter(Boolean); let shown = 0;
      for (const tr of rows) { const ok = words.every(w => tr.textContent.toLowerCase().includes(w)); tr.style.display = ok ? '' : 'none'; shown += ok; }
      count.textContent = ' ' + shown + ' of ' + rows.length + ' rows';
    });
    [...table.tHead.rows[0].cells].forEach((th, c) => th.addEventListener('click', () => {
      const dir = th.dataset.dir === 'asc' ? 'desc' : 'asc';
      [...table.tHead.rows[0].cells].forEach(x => delete x.dataset.dir); th.dataset.dir = dir;
      const sorted = rows.slice().sort((a, b) => {
        const x = cellValue(a.cells[c]), y = cellValue(b.cells[c]);
        const r = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === 'number' ? -1 : 1);
        return dir === 'asc' ? r : -r;
      });
      sorted.forEach(tr => body.appendChild(tr));
    }));
  }

  document.querySelectorAll('.hs-explore').forEach(box => {
    const data = JSON.parse(document.getElementById(box.dataset.src).textContent);
    box.querySelectorAll('.hs-js').forEach(x => { x.hidden = false; });
    const slider = box.querySelector('.hs-slider'), viewer = box.querySelector('.hs-attention');
    if (data.selectivity && slider) initSlider(slider, data);
    if (data.attention && viewer) initViewer(viewer, data);
  });
  document.querySelectorAll('table.hs-table').forEach(initTable);
})();
"""
