# ruff: noqa: E501 - an embedded, minified page
"""``/docs``: a small self-contained page rendering ``/openapi.json`` (no CDN)."""

from __future__ import annotations

__all__ = ["DOCS_HEADERS", "DOCS_HTML"]

#: Headers of ``/docs``: its inline script and style only, and framed by no page at all.
DOCS_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}

DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Wallaby Gateway API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:15px/1.5 system-ui,sans-serif;margin:0 auto;max-width:60em;padding:1em;color:#222}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd}
.op{border:1px solid #ddd;border-radius:6px;margin:.6em 0;padding:.4em .8em}
.m{display:inline-block;min-width:4.5em;font-weight:bold;font-family:monospace}
.GET{color:#1565c0}.POST{color:#2e7d32}.PUT{color:#ef6c00}.DELETE{color:#c62828}
code,pre{background:#f5f5f5;border-radius:3px;padding:0 .2em}
pre{padding:.5em;overflow:auto}table{border-collapse:collapse}
td,th{border:1px solid #eee;padding:.1em .5em;text-align:left;vertical-align:top}
details summary{cursor:pointer}
</style></head>
<body><h1 id="title">Wallaby Gateway API</h1><div id="intro"></div><div id="ops">Loading…</div>
<script>
"use strict";
function el(tag, attrs, text){const e=document.createElement(tag);
  Object.entries(attrs||{}).forEach(([k,v])=>e.setAttribute(k,v));
  if(text!==undefined)e.textContent=text;return e;}
function deref(spec,o){while(o&&o.$ref){o=o.$ref.slice(2).split("/").reduce((n,p)=>n[p],spec);}return o;}
fetch("/openapi.json").then(r=>r.json()).then(spec=>{
  document.getElementById("title").textContent=spec.info.title+" "+spec.info.version;
  document.getElementById("intro").appendChild(el("pre",{},spec.info.description||""));
  const root=document.getElementById("ops");root.textContent="";
  const byTag={};
  for(const [path,item] of Object.entries(spec.paths)){
    for(const m of ["get","put","post","delete"]){const op=item[m];if(!op)continue;
      const tag=(op.tags||["other"])[0];(byTag[tag]=byTag[tag]||[]).push([m,path,op,item]);}}
  for(const [tag,ops] of Object.entries(byTag)){
    root.appendChild(el("h2",{},tag));
    for(const [m,path,op,item] of ops){
      const d=el("details",{"class":"op"});const s=el("summary");
      s.appendChild(el("span",{"class":"m "+m.toUpperCase()},m.toUpperCase()));
      s.appendChild(el("code",{},path));s.appendChild(document.createTextNode(" — "+(op.summary||"")));
      d.appendChild(s);
      const params=[...(item.parameters||[]),...(op.parameters||[])].map(p=>deref(spec,p));
      if(params.length){const t=el("table");t.appendChild(el("tr")).append(el("th",{},"name"),el("th",{},"in"),el("th",{},"schema"));
        params.forEach(p=>{const r=el("tr");r.append(el("td",{},p.name),el("td",{},p.in),el("td",{},JSON.stringify(p.schema||{})));t.appendChild(r);});
        d.appendChild(t);}
      if(op.requestBody){const c=op.requestBody.content||{};for(const [ct,b] of Object.entries(c)){
        d.appendChild(el("p",{},"Body ("+ct+"):"));d.appendChild(el("pre",{},JSON.stringify(deref(spec,b.schema),null,1)));}}
      d.appendChild(el("p",{},"Responses: "+Object.keys(op.responses||{}).join(", ")));
      root.appendChild(d);}}
}).catch(e=>{document.getElementById("ops").textContent="Cannot load /openapi.json: "+e;});
</script></body></html>
"""
