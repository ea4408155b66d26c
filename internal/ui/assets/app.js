// podnet's web view: it reads the same API as the command line (served by
// the process that serves this page) and redraws every two seconds.
"use strict";

const $ = (sel) => document.querySelector(sel);
let flows = [];

function cell(tr, text) {
  const td = document.createElement("td");
  td.textContent = text;
  tr.appendChild(td);
  return td;
}

function fill(table, rows) {
  const body = $(table + " tbody");
  body.replaceChildren();
  for (const r of rows) {
    const tr = document.createElement("tr");
    if (r.cls) tr.className = r.cls;
    for (const c of r.cells) cell(tr, c);
    body.appendChild(tr);
  }
}

function name(n, addr, port) {
  const a = port ? addr + ":" + port : addr;
  return n ? n : a;
}

function drawState(st) {
  fill("#nodes", st.nodes.map((n) => ({ cells: [n.name, n.address, (n.podCIDRs || []).join(", ")] })));
  fill("#pods", st.pods.map((p) => ({ cells: [p.name, p.node, (p.ips || []).join(", "), p.labels] })));
  fill("#services", st.services.map((s) => ({ cells: [s.name, s.clusterIP, s.ports, (s.endpoints || []).join(", ") || "none"] })));
  drawMap(st.pods);
}

function drawMap(pods) {
  const svg = $("#map");
  for (const el of Array.from(svg.querySelectorAll("g, line"))) el.remove();
  const pos = {};
  const cx = 400, cy = 260, r = 200;
  pods.forEach((p, i) => {
    const t = (2 * Math.PI * i) / Math.max(pods.length, 1);
    pos[p.name] = [cx + r * Math.cos(t), cy + r * Math.sin(t)];
  });
  const edges = {};
  for (const f of flows) {
    const from = f.srcName, to = f.service ? "svc/" + f.service : f.dstName;
    const target = f.dstName || to;
    if (!from || !pos[from] || !pos[target]) continue;
    const key = from + " → " + target;
    const e = edges[key] || (edges[key] = { from, to: target, n: 0, drops: 0 });
    e.n++;
    if (f.verdict !== "forwarded") e.drops++;
  }
  const ns = "http://www.w3.org/2000/svg";
  const list = $("#edges");
  list.replaceChildren();
  for (const e of Object.values(edges)) {
    const [x1, y1] = pos[e.from], [x2, y2] = pos[e.to];
    const line = document.createElementNS(ns, "line");
    line.setAttribute("x1", x1); line.setAttribute("y1", y1);
    line.setAttribute("x2", x2); line.setAttribute("y2", y2);
    line.setAttribute("class", e.drops ? "drop" : "ok");
    line.setAttribute("data-edge", e.from + " -> " + e.to);
    svg.appendChild(line);
    const li = document.createElement("li");
    li.textContent = `${e.from} → ${e.to}: ${e.n} flow(s)` + (e.drops ? `, ${e.drops} dropped` : "");
    if (e.drops) li.className = "drop";
    list.appendChild(li);
  }
  for (const p of pods) {
    const g = document.createElementNS(ns, "g");
    g.setAttribute("class", "pod");
    g.setAttribute("data-pod", p.name);
    const c = document.createElementNS(ns, "circle");
    c.setAttribute("cx", pos[p.name][0]); c.setAttribute("cy", pos[p.name][1]); c.setAttribute("r", 8);
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", pos[p.name][0] + 10); t.setAttribute("y", pos[p.name][1] + 4);
    t.textContent = p.name;
    g.append(c, t);
    svg.appendChild(g);
  }
}

function drawFlows() {
  const q = $("#q").value.trim();
  const v = $("#verdict").value;
  const rows = flows.filter((f) => (!v || f.verdict === v) &&
    (!q || JSON.stringify(f).includes(q))).slice().reverse().slice(0, 500);
  fill("#flows", rows.map((f) => ({
    cls: f.verdict,
    cells: [new Date(f.time).toLocaleTimeString(), f.node, name(f.srcName, f.src, f.srcPort),
      (f.service ? "svc/" + f.service + " → " : "") + name(f.dstName, f.dst, f.dstPort), f.protocol, f.verdict,
      f.reason ? f.reason + (f.policies ? ": " + f.direction + " isolated by " + f.policies.join(", ") : "") : ""],
  })));
}

async function refresh() {
  try {
    const [st, fl] = await Promise.all([fetch("api/state").then((r) => r.json()), fetch("api/flows").then((r) => r.json())]);
    flows = fl || [];
    for (const k of ["nodes", "pods", "services"]) st[k] = st[k] || [];
    drawState(st);
    drawFlows();
    $("#status").textContent = `${st.nodes.length} nodes, ${st.pods.length} pods, ${st.services.length} services, ${flows.length} flows`;
  } catch (e) {
    $("#status").textContent = "cannot reach podnet: " + e;
  }
}

$("#q").addEventListener("input", drawFlows);
$("#verdict").addEventListener("change", drawFlows);
refresh();
setInterval(refresh, 2000);
