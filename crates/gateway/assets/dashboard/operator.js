// The operator view: reads GET /v1/admin/overview with the read-only session and
// refreshes every five seconds.
"use strict";

const money = (minor, currency) => (minor / 100).toLocaleString("en-US", { style: "currency", currency: (currency || "usd").toUpperCase() });
const cell = (value, className) => { const td = document.createElement("td"); td.textContent = value; if (className) td.className = className; return td; };

// How collection stands: charges tried, and the next retry or why dunning stopped.
function dunningText(r) {
  if (r.dunning === "none") return r.payment_attempts ? `${r.payment_attempts} tried` : "";
  const next = r.next_attempt_at ? `, next ${r.next_attempt_at.slice(0, 16).replace("T", " ")}` : "";
  return `${r.dunning.replace("_", " ")} after ${r.payment_attempts}${next}`;
}

function fill(id, rows, columns) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren();
  if (rows.length === 0) { const tr = document.createElement("tr"); tr.append(cell("None")); body.append(tr); return; }
  for (const row of rows) {
    const tr = document.createElement("tr");
    for (const [value, className] of columns(row)) tr.append(cell(value, className));
    body.append(tr);
  }
}

async function refresh() {
  const response = await fetch("/v1/admin/overview", { credentials: "same-origin", headers: { accept: "application/json" } });
  if (response.status === 401) { window.location.assign("/dashboard/operator"); return; }
  const o = await response.json();
  fill("states", o.tenants_by_state, (r) => [[r.state], [String(r.tenants), "num"]]);
  fill("revenue", o.revenue_by_month, (r) => [[r.month], [String(r.invoices), "num"], [money(r.paid, r.currency), "num"]]);
  fill("unpaid", o.unpaid_invoices, (r) => [[r.tenant_id], [r.period_start.slice(0, 10)], [r.status], [dunningText(r)], [money(r.total, r.currency), "num"]]);
  fill("transitions", o.recent_transitions, (r) => [[r.created_at.slice(0, 19).replace("T", " ")], [r.tenant_id], [`${r.kind}: ${r.from_state} → ${r.to_state} (${r.from_plan} → ${r.to_plan})`], [r.status]]);
  fill("winback", o.winback_campaigns, (r) => [[r.tenant_id], [r.reason], [r.status], [String(r.steps_sent), "num"]]);
  if (o.readiness) {
    document.getElementById("readiness").textContent = o.readiness.checks
      .map((c) => `${c.status === "pass" ? "✅" : "⚠️"} ${c.name}: ${c.detail} (${c.duration_ms} ms)`)
      .join("\n") + `\n${o.readiness.passed}/${o.readiness.total} checks ready at ${o.readiness.checked_at}`;
  }
  document.getElementById("updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
}

refresh();
setInterval(refresh, 5000);
