// The counter page (docs/service.md, "The counter page"): talks to the service it is served from, same
// origin only; nothing is fetched from anywhere else. Amounts come as integer fen with yuan beside.
"use strict";

const $ = (selector) => document.querySelector(selector);

function show(line, kind = "info") {
  const entry = document.createElement("p");
  entry.className = kind;
  entry.textContent = line;
  $("#result").prepend(entry);
}

async function api(path, body) {
  const reader = $("#reader").value.trim();
  const answer = await fetch(path, {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify(reader ? {reader, ...body} : body),
  });
  const json = await answer.json();
  if (json.error) {
    show(`错误 Error ${json.error.exit_code} (${json.error.code}): ${json.error.message}`, "error");
    return null;
  }
  for (const message of json.messages || []) show(message);
  return json;
}

function items(text) {
  return text.split("\n").map((line) => line.trim()).filter(Boolean).map((line) => {
    const parts = line.split(":");
    const price = parts.pop(), quantity = parts.pop();
    return {name: parts.join(":"), quantity: Number.parseInt(quantity, 10), price};
  });
}

function form(id, handler) {
  $(id).addEventListener("submit", async (event) => {
    event.preventDefault();
    const fields = Object.fromEntries(new FormData(event.target).entries());
    await handler(fields);
    for (const secret of event.target.querySelectorAll("input[type=password]")) secret.value = "";
  });
}

function split(json) {
  return `合计 total ${json.total} = 统筹 fund ${json.fund} + 个人账户 account ${json.account} + 现金 cash ${json.cash}; ` +
         `余额 balance ${json.balance} (${json.setl_id})`;
}

form("#read-form", async () => {
  const json = await api("/api/read", {redact: true});
  if (!json) return;
  const holder = json.identity;
  $("#holder").replaceChildren(...[
    ["姓名 Name", holder.full_name], ["社会保障号码 ID", holder.social_security_number],
    ["卡号 Card", holder.card_number], ["发卡地区 Region", holder.issuing_region],
    ["状态 State", holder.activated ? "已激活 active" : "未激活 not activated"],
  ].flatMap(([label, value]) => {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = label;
    dd.textContent = value;
    return [dt, dd];
  }));
  show(`读卡成功 Card read: ${holder.full_name} (${json.algorithm})`, "ok");
});

form("#register-form", async (fields) => {
  const json = await api("/api/register", {type: fields.type, department: fields.department, pin: fields.pin || null});
  if (json) show(`挂号成功 Registered: ${json.department}, 就诊号 visit ${json.mdtrt_id ?? "(queued)"}`, "ok");
});

form("#settle-form", async (fields) => {
  const json = await api("/api/settle", {visit: fields.visit, bill: fields.bill, items: items(fields.items), pin: fields.pin});
  if (json) show(`结算成功 Settled bill ${json.bill_no}: ${split(json)}`, "ok");
});

form("#purchase-form", async (fields) => {
  const json = await api("/api/purchase", {sale: fields.sale, items: items(fields.items), pin: fields.pin});
  if (json) show(`支付成功 Paid sale ${json.sale_no}: ${split(json)}`, "ok");
});

form("#refund-form", async (fields) => {
  const body = fields.bill ? {bill: fields.bill} : {sale: fields.sale};
  const json = await api("/api/refund", body);
  if (json) show(`退费成功 Refunded ${json.sale_no ?? json.bill_no}: 个人账户 account ${json.account}, 现金 cash ${json.cash}; 余额 balance ${json.balance}`, "ok");
});

form("#reconcile-form", async (fields) => {
  const json = await api("/api/reconcile", fields.date ? {date: fields.date} : {});
  if (!json) return;
  show(json.balanced ? `对账平衡 Balanced (${json.date})` : `对账不平 NOT BALANCED (${json.date})`, json.balanced ? "ok" : "error");
  for (const line of json.lines) for (const difference of line.differences) show(difference.text, "error");
});

function events() {
  const socket = new WebSocket(`ws://${location.host}/ws`);
  socket.addEventListener("open", () => {
    $("#status").textContent = "已连接 Connected";
    socket.send(JSON.stringify({subscribe: "events"}));
  });
  socket.addEventListener("message", (message) => {
    const event = JSON.parse(message.data);
    if (event.event === "inserted" || event.event === "present") {
      $("#status").textContent = `卡已插入 Card in ${event.reader}`;
    } else if (event.event === "removed") {
      $("#status").textContent = `卡已取出 Card out of ${event.reader}`;
      $("#holder").replaceChildren();
    }
  });
  socket.addEventListener("close", () => {
    $("#status").textContent = "连接断开 Disconnected: retrying…";
    setTimeout(events, 2000);
  });
}

events();
