// The dashboard: reads the public API with the browser's session cookie and refreshes
// every second, so new usage shows within two. Changes (plan change, sign-out) carry
// the session's CSRF token.
"use strict";

const REFRESH_MS = 1000;
let csrf = null;

async function api(path, options = {}) {
  const headers = Object.assign({ "accept": "application/json" }, options.headers || {});
  if (options.method && options.method !== "GET") headers["x-csrf-token"] = csrf;
  const response = await fetch(path, Object.assign({}, options, { headers, credentials: "same-origin" }));
  if (response.status === 401) { window.location.assign("/dashboard"); throw new Error("signed out"); }
  const body = response.status === 204 ? null : await response.json();
  if (!response.ok) throw new Error((body && body.error && body.error.message) || response.statusText);
  return body;
}

const number = (n) => (n === null || n === undefined) ? "—" : Number(n).toLocaleString("en-US");
const money = (minor, currency) => (minor / 100).toLocaleString("en-US", { style: "currency", currency: (currency || "usd").toUpperCase() });
const text = (id, value) => { document.getElementById(id).textContent = value; };
const cell = (value, className) => { const td = document.createElement("td"); td.textContent = value; if (className) td.className = className; return td; };

function renderQuotas(tenant, summary) {
  const box = document.getElementById("quotas");
  box.replaceChildren();
  for (const [metric, m] of Object.entries(summary.metrics)) {
    const card = document.createElement("div");
    card.className = "quota";
    card.dataset.metric = metric;
    const cap = m.limit !== null ? m.limit : m.included;
    const share = cap > 0 ? m.used / cap : 0;
    if (share >= 1) card.classList.add("alert100"); else if (share >= 0.8) card.classList.add("alert80");
    const title = document.createElement("h3"); title.textContent = metric;
    const numbers = document.createElement("div"); numbers.className = "numbers";
    const used = document.createElement("span"); used.className = "used"; used.textContent = number(m.used);
    numbers.append(used, ` used of ${number(cap)} ${m.limit !== null ? "(hard limit)" : "included"}`);
    const track = document.createElement("div"); track.className = "track";
    track.setAttribute("role", "progressbar"); track.setAttribute("aria-label", `${metric} used`);
    track.setAttribute("aria-valuemin", "0"); track.setAttribute("aria-valuemax", String(cap)); track.setAttribute("aria-valuenow", String(m.used));
    const fill = document.createElement("div"); fill.className = "fill"; fill.style.width = `${Math.min(100, share * 100).toFixed(1)}%`;
    track.append(fill);
    const alert = document.createElement("div"); alert.className = "alert";
    alert.textContent = share >= 1 ? (m.limit !== null ? "Limit reached" : `Over included: ${number(m.overage)} billed as overage`) : share >= 0.8 ? "Over 80% of the quota" : "";
    card.append(title, numbers, track, alert);
    box.append(card);
  }
}

// The status as a tenant needs it: a declined charge says when it is tried again.
function invoiceStatus(invoice) {
  const payment = invoice.payment;
  if (invoice.status !== "open" || !payment || payment.dunning === "none") return invoice.status;
  if (payment.dunning === "retrying" && payment.next_attempt_at) {
    return `payment declined, retried ${payment.next_attempt_at.slice(0, 16).replace("T", " ")} UTC`;
  }
  return "payment declined: add a new card to pay";
}

function renderUpcoming(invoice) {
  const body = document.querySelector("#upcoming tbody");
  body.replaceChildren();
  for (const line of invoice.lines) {
    const row = document.createElement("tr");
    row.append(cell(line.description), cell(number(line.quantity), "num"), cell(money(line.amount, invoice.currency), "num"));
    body.append(row);
  }
  const total = document.createElement("tr");
  total.append(cell("Total"), cell(""), cell(money(invoice.total, invoice.currency), "num"));
  body.append(total);
}

function renderInvoices(list) {
  const body = document.querySelector("#invoices tbody");
  body.replaceChildren();
  if (list.invoices.length === 0) { const row = document.createElement("tr"); row.append(cell("No invoices yet")); body.append(row); }
  for (const invoice of list.invoices) {
    const row = document.createElement("tr");
    row.append(cell(`${invoice.period_start.slice(0, 10)} – ${invoice.period_end.slice(0, 10)}`), cell(invoiceStatus(invoice)), cell(money(invoice.total, invoice.currency), "num"));
    body.append(row);
  }
}

async function renderChart() {
  const metric = document.getElementById("chart-metric").value;
  const granularity = document.getElementById("chart-granularity").value;
  const series = await api(`/v1/usage?metric=${encodeURIComponent(metric)}&granularity=${encodeURIComponent(granularity)}`);
  const svg = document.getElementById("chart");
  svg.replaceChildren();
  const points = series.series;
  const max = Math.max(1, ...points.map((p) => Number(p.value)));
  const width = 600 / Math.max(1, points.length);
  points.forEach((p, i) => {
    const height = (Number(p.value) / max) * 150;
    const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    rect.setAttribute("x", String(i * width + 1)); rect.setAttribute("width", String(Math.max(1, width - 2)));
    rect.setAttribute("y", String(158 - height)); rect.setAttribute("height", String(height));
    const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
    title.textContent = `${p.start}: ${number(p.value)}`;
    rect.append(title); svg.append(rect);
  });
  text("chart-total", `Total ${metric} in range: ${number(series.total)}`);
}

async function refresh() {
  try {
    const [tenant, summary, upcoming, invoices] = await Promise.all([
      api("/v1/tenant"), api("/v1/usage/summary"), api("/v1/invoices/upcoming"), api("/v1/invoices"),
    ]);
    text("tenant-name", tenant.name); text("plan", tenant.plan); text("state", tenant.state);
    text("period", `${tenant.period_start.slice(0, 16).replace("T", " ")} – ${tenant.period_end.slice(0, 16).replace("T", " ")} UTC`);
    renderQuotas(tenant, summary); renderUpcoming(upcoming); renderInvoices(invoices);
    await renderChart();
    text("updated", `Updated ${new Date().toLocaleTimeString()}`);
  } catch (error) {
    text("updated", `Could not refresh: ${error.message}`);
  }
}

async function start() {
  csrf = (await api("/dashboard/session")).csrf_token;
  document.getElementById("logout").addEventListener("click", async () => {
    await api("/dashboard/logout", { method: "POST" }).catch(() => {});
    window.location.assign("/dashboard");
  });
  document.getElementById("plan-change").addEventListener("submit", async (event) => {
    event.preventDefault();
    const plan = document.getElementById("new-plan").value;
    try {
      const answer = await api("/v1/tenant/plan-changes", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ plan }) });
      text("plan-change-result", `Requested: ${answer.transition.from_plan} → ${answer.transition.to_plan} (${answer.transition.state})`);
    } catch (error) { text("plan-change-result", error.message); }
  });
  document.getElementById("export").addEventListener("click", async () => {
    const data = await api("/v1/tenant/export");
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([JSON.stringify(data, null, 2)], { type: "application/json" }));
    link.download = "export.json"; link.click();
  });
  for (const id of ["chart-metric", "chart-granularity"]) document.getElementById(id).addEventListener("change", renderChart);
  await refresh();
  setInterval(refresh, REFRESH_MS);
}

start();
