# ruff: noqa: E501 - the page is HTML and JavaScript in one string; its lines are not Python
"""The status page: one self-contained HTML document (inline CSS, inline JavaScript, charts drawn as inline
SVG), no external resource, so it works offline and behind any firewall. It fetches /status.json every
2 seconds and redraws; the layout is one column on a phone and tables scroll sideways when narrow.
Element ids (pools, hosts, pinned, advice, chart-*, workers) are what the browser test looks for. With
worker processes the numbers are the whole pooler's (runtime/webshare.py) and the header says how many
workers answered."""

from __future__ import annotations

PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pgmux status</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d232b}
header{background:#1d3b5a;color:#fff;padding:10px 16px;display:flex;flex-wrap:wrap;gap:12px;align-items:baseline}
header h1{font-size:18px;margin:0}header span{opacity:.85;font-size:13px}header span.bad{color:#ffc4c4;opacity:1}
main{padding:12px;display:grid;gap:12px;grid-template-columns:repeat(auto-fit,minmax(320px,1fr))}
section{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:10px 12px;min-width:0}
section.wide{grid-column:1/-1}h2{font-size:15px;margin:0 0 8px}
.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:4px 8px;border-bottom:1px solid #eef1f4;text-align:right;white-space:nowrap}
th:first-child,td:first-child,th.l,td.l{text-align:left}th{font-weight:600;color:#4a5562;font-size:12px}
.warn{color:#b35c00;font-weight:600}.bad{color:#c0262d;font-weight:600}.ok{color:#217a3c}
.muted{color:#6b7683}svg{width:100%;height:140px;display:block}
.legend{font-size:12px;color:#4a5562}.legend b{display:inline-block;width:10px;height:3px;margin:0 4px 3px 10px}
@media (max-width:600px){main{padding:6px;gap:8px}section{padding:8px}th,td{padding:3px 4px;font-size:12px}
header h1{font-size:16px}}
</style></head><body>
<header><h1>pgmux</h1><span id="version"></span><span id="uptime"></span><span id="workers"></span><span id="updated" class="muted"></span></header>
<main>
<section class="wide"><h2>Pools</h2><div class="scroll"><table id="pools"><thead><tr>
<th>database</th><th>user</th><th title="clients active">cl act</th><th title="clients waiting">cl wait</th>
<th title="servers active">sv act</th><th title="servers idle">sv idle</th><th title="servers logging in">sv login</th>
<th title="pool_size">size</th><th title="oldest wait, seconds">max wait</th><th class="l">mode</th></tr></thead>
<tbody></tbody></table></div></section>
<section><h2>Transactions per second</h2><svg id="chart-tps" viewBox="0 0 300 140" preserveAspectRatio="none"></svg>
<div class="legend"><b style="background:#1f6fb2"></b>tps</div></section>
<section><h2>Client wait (ms)</h2><svg id="chart-wait" viewBox="0 0 300 140" preserveAspectRatio="none"></svg>
<div class="legend"><b style="background:#1f6fb2"></b>p50<b style="background:#c0262d"></b>p99</div></section>
<section><h2>Server connections</h2><svg id="chart-servers" viewBox="0 0 300 140" preserveAspectRatio="none"></svg>
<div class="legend"><b style="background:#1f6fb2"></b>in use<b style="background:#8a96a3"></b>open<b style="background:#b35c00"></b>clients waiting</div></section>
<section class="wide"><h2>Hosts of split databases</h2><div class="scroll"><table id="hosts"><thead><tr>
<th>database</th><th class="l">host</th><th class="l">role</th><th class="l">state</th><th>lag (bytes)</th><th>lag (s)</th>
<th>bans</th><th>reads</th><th>writes</th><th class="l">why</th></tr></thead><tbody></tbody></table></div></section>
<section><h2>Pinned clients</h2><div id="pinned-summary" class="muted"></div><div class="scroll"><table id="pinned"><thead><tr>
<th>client</th><th class="l">database/user</th><th class="l">address</th><th class="l">why</th></tr></thead><tbody></tbody></table></div></section>
<section id="advice-panel"><h2>Pool advisor</h2><div id="advice" class="muted"></div></section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
function esc(v){return String(v===null||v===undefined?"":v).replace(/[&<>"]/g,c=>({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;"}[c]));}
function rows(id, list, cells){
  $(id).tBodies[0].innerHTML = list.map(r => "<tr>"+cells(r).map(c => "<td"+(c[1]?' class="'+c[1]+'"':"")+">"+esc(c[0])+"</td>").join("")+"</tr>").join("");
}
function chart(id, series, colors, scale){
  const svg = $(id); const W = 300, H = 140, pad = 4;
  let max = 0; for (const s of series) for (const v of s) if (v !== null && v*scale > max) max = v*scale;
  max = max > 0 ? max * 1.1 : 1; let out = "";
  for (let k = 0; k < series.length; k++){
    const s = series[k]; const n = s.length; if (n < 1) continue; let d = "";
    for (let i = 0; i < n; i++){ if (s[i] === null) continue;
      const x = n > 1 ? pad + (W - 2*pad) * i / (n - 1) : W/2; const y = H - pad - (H - 2*pad) * (s[i]*scale) / max;
      d += (d ? " " : "") + x.toFixed(1) + "," + y.toFixed(1); }
    out += '<polyline fill="none" stroke-width="1.6" vector-effect="non-scaling-stroke" stroke="'+colors[k]+'" points="'+d+'"/>';
  }
  const label = max >= 100 ? Math.round(max) : max.toPrecision(2);
  svg.innerHTML = out + '<text x="4" y="12" font-size="10" fill="#6b7683">'+esc(label)+'</text>';
  svg.setAttribute("data-points", String(series[0].length));
}
function render(s){
  $("version").textContent = s.version; $("uptime").textContent = "up " + s.uptime + " s";
  $("updated").textContent = "updated " + new Date(s.time*1000).toLocaleTimeString();
  if (s.workers){ const miss = s.workers.missing;
    $("workers").textContent = s.workers.count + " workers, whole pooler" + (miss.length ? "; no answer from worker " + miss.join(", ") + ": their numbers are missing" : "");
    $("workers").className = miss.length ? "bad" : ""; }
  rows("pools", s.pools, p => [[p.database],[p.user,"l"],[p.cl_active],[p.cl_waiting, p.cl_waiting ? "warn" : ""],
    [p.sv_active],[p.sv_idle],[p.sv_login],[p.pool_size],[p.maxwait.toFixed(3), p.maxwait >= 1 ? "bad" : ""],
    [p.pool_mode,"l"]]);
  rows("hosts", s.hosts, h => [[h.database],[h.host,"l"],[h.role,"l"],[h.state, h.state === "up" ? "l ok" : "l bad"],
    [h.lag_bytes],[h.lag_seconds],[h.bans],[h.reads],[h.writes],[h.reason,"l"]]);
  if (!s.hosts.length) $("hosts").tBodies[0].innerHTML = '<tr><td class="l muted" colspan="10">no read/write-split database in use</td></tr>';
  const reasons = Object.entries(s.pinned_by_reason).map(e => e[0] + ": " + e[1]).join(", ");
  $("pinned-summary").textContent = reasons ? "by reason: " + reasons : "no client is pinned to its server";
  rows("pinned", s.pinned, c => [["C-"+c.id+(c.worker === undefined ? "" : " w"+c.worker)],[c.database+"/"+c.user,"l"],[c.addr,"l"],[c.reason,"l"]]);
  if (s.advice === null){
    $("advice").textContent = "No pool advisor in this pgmux (SHOW ADVICE is not available): panel omitted.";
  } else if (!s.advice.length){ $("advice").textContent = "No advice yet.";
  } else { const cols = Object.keys(s.advice[0]);
    $("advice").innerHTML = '<div class="scroll"><table><thead><tr>' + cols.map(c => "<th>"+esc(c)+"</th>").join("") +
      "</tr></thead><tbody>" + s.advice.map(r => "<tr>"+cols.map(c => "<td>"+esc(r[c])+"</td>").join("")+"</tr>").join("") + "</tbody></table></div>"; }
  const h = s.history;
  chart("chart-tps", [h.tps], ["#1f6fb2"], 1);
  chart("chart-wait", [h.wait_p50, h.wait_p99], ["#1f6fb2", "#c0262d"], 1000);
  chart("chart-servers", [h.sv_active, h.sv_total, h.cl_waiting], ["#1f6fb2", "#8a96a3", "#b35c00"], 1);
  document.body.setAttribute("data-updated", String(s.time));
}
async function refresh(){
  try { const r = await fetch("status.json", {cache: "no-store"}); if (r.ok) render(await r.json()); }
  catch (e) { $("updated").textContent = "cannot reach pgmux: " + e; }
  setTimeout(refresh, 2000);
}
refresh();
</script></body></html>
"""
