// The storefront's behaviour: every action is a real event, sent by the tracker (/static/streamrec.js,
// docs/tracker.md) to POST /v1/events, and the recommendation rows are fetched from the public JSON API
// and refetched until they change.
import { createTracker } from "/static/streamrec.js";

(() => {
  "use strict";

  const ROW_K = 8;
  const AFTER_EVENT_MS = 1500; // how long rows are refetched after an event, waiting for a change
  const SETTLE_MS = 150; // a changed row is read once more after this long
  const POLL_MS = 4000; // background refresh, so other shoppers' actions show too
  const SEARCH_WAIT_MS = 1500; // a search waits this long for its 202 before the results page opens
  const LS_SHOPPER = "streamrec.shopper";
  const params = new URLSearchParams(location.search);
  const shopperInput = document.getElementById("shopper");
  const rows = Array.from(document.querySelectorAll("[data-row]"));
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function shopper() {
    return localStorage.getItem(LS_SHOPPER) || "alice";
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k.startsWith("data-")) node.dataset[k.slice(5).replace(/-(\w)/g, (_, c) => c.toUpperCase())] = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  const money = (price) => (price === null || price === undefined || price === "" ? "" : "$" + Number(price).toFixed(2));

  function localImage(item) {
    const url = item.image_url || "";
    return url.startsWith("/") && !url.startsWith("//") ? url : `/static/img/${encodeURIComponent(item.item_id)}.svg`;
  }

  // ---- events ---------------------------------------------------------------------------------

  // the log of sent events survives page changes within the tab (sessionStorage)
  const readLog = () => JSON.parse(sessionStorage.getItem("streamrec.log") || "[]");

  function renderLog() {
    const log = document.getElementById("event-log");
    log.replaceChildren(...readLog().map(([text, failed]) => el("li", { class: failed ? "failed" : null }, text)));
  }

  function logLine(text, failed) {
    sessionStorage.setItem("streamrec.log", JSON.stringify([[`${shopper()}: ${text}`, !!failed], ...readLog()].slice(0, 8)));
    renderLog();
  }

  function describe(e) {
    return e.type === "search" ? `search "${e.query}"` : `${e.type} ${e.item_id}`;
  }

  // the page's own tracker: the publishable ("events" role) key the server put in the page, if any; the
  // shopper of the moment; every action sent at once (the rows show what it changed), same-tick ones together
  const tracker = createTracker({
    apiKey: document.querySelector('meta[name="streamrec-api-key"]')?.content || "",
    userId: () => shopper(),
    batchSize: 1,
    maxAttempts: 4,
  });

  /** Send events for the current shopper; after the 202, refetch the rows until they change. */
  async function send(events) {
    const started = performance.now();
    const what = events.map(describe).join(", ") + (events[0].recommendation_id ? " (from a recommendation)" : "");
    // recommendation_id is always given: the storefront says which answer an action came from, or none
    const results = await Promise.all(events.map(({ type, ...fields }) => tracker.track(type, { recommendation_id: null, ...fields })));
    const failed = results.find((r) => !r.ok);
    if (failed) {
      logLine(`${what}: ${failed.status ? `${failed.status} ${failed.msg}` : `not sent (${failed.msg})`}`, true);
      return false;
    }
    logLine(`${what} \u2192 202 in ${Math.round(performance.now() - started)} ms`);
    refreshAfterEvent(events[events.length - 1].type, started);
    return true;
  }

  // ---- recommendation rows --------------------------------------------------------------------

  function rowUrl(row) {
    const user = encodeURIComponent(shopper());
    if (row.dataset.row === "shelf") {
      const placement = encodeURIComponent(row.dataset.placement);
      return `/v1/users/${user}/recommendations?k=${ROW_K}&explain=true&placement=${placement}`;
    }
    if (row.dataset.row === "similar") {
      return `/v1/items/${encodeURIComponent(row.dataset.itemId)}/similar?k=${ROW_K}&explain=true&user_id=${user}`;
    }
    return `/v1/users/${user}/recommendations?k=${ROW_K}&explain=true`;
  }

  /** "bought together with 50" reads better as "bought together with Star Wars (1977)" when the page knows the title. */
  function readableReason(reason) {
    const match = /^(.* with )(.+)$/.exec(reason || "");
    if (!match) return reason || "";
    const card = Array.from(document.querySelectorAll("[data-item-id]")).find((n) => n.dataset.itemId === match[2] && n.dataset.title);
    const line = readCart().find((l) => l.item_id === match[2]);
    const title = card ? card.dataset.title : line ? line.title : null;
    return title ? match[1] + title : reason;
  }

  function renderRow(row, data) {
    row.dataset.rid = data.recommendation_id;
    row.dataset.strategy = data.strategy;
    row.dataset.items = data.items.map((i) => i.item_id).join(",");
    const cards = row.querySelector(".cards");
    cards.replaceChildren(
      ...data.items.map((item) => {
        const href = `/shop/p/${encodeURIComponent(item.item_id)}?rid=${encodeURIComponent(data.recommendation_id)}`;
        return el(
          "article",
          { class: "card", "data-item-id": item.item_id, "data-title": item.title || item.item_id, "data-price": item.price ?? "" },
          el("a", { class: "card-link", href }, el("img", { src: localImage(item), alt: "", width: 240, height: 240 }), el("h3", {}, item.title || item.item_id)),
          el("p", { class: "meta" }, el("span", { class: "category" }, item.category || ""), el("span", { class: "price" }, money(item.price))),
          el("p", { class: "reason" }, readableReason(item.reason)),
          el("button", { type: "button", class: "add", disabled: item.in_stock === false }, "Add to cart"),
        );
      }),
    );
    if (!data.items.length) cards.append(el("p", { class: "empty" }, "Nothing to recommend yet."));
  }

  function setMeta(row, text) {
    row.querySelector(".row-meta").textContent = `${row.dataset.strategy || ""}${text ? " \u00b7 " + text : ""}`;
  }

  /** Fetch one row; render it only if its items or reasons changed. Returns whether it changed. */
  async function loadRow(row) {
    let resp;
    try {
      resp = await fetch(rowUrl(row), { cache: "no-store" });
    } catch (_) {
      row.querySelector(".row-meta").textContent = "the API is unreachable";
      return false;
    }
    if (!resp.ok) {
      const missing = resp.status === 404 && row.dataset.placement;
      row.querySelector(".row-meta").textContent = missing
        ? `no placement "${row.dataset.placement}" yet: PUT /v1/admin/placements/${row.dataset.placement}`
        : `unavailable (HTTP ${resp.status})`;
      if (missing) {
        row.dataset.signature = "";
        row.querySelector(".cards").replaceChildren();
      }
      return false;
    }
    const data = (await resp.json()).data;
    const signature = JSON.stringify([shopper(), data.items.map((i) => [i.item_id, i.reason])]);
    if (signature === row.dataset.signature) return false;
    row.dataset.signature = signature;
    renderRow(row, data);
    return true;
  }

  let busy = 0;
  let lastEvent = 0;

  async function refreshAfterEvent(type, started) {
    const mine = ++lastEvent; // a newer event takes over, so a change is credited to the event that caused it
    busy += 1;
    try {
      const pending = new Set(rows);
      const deadline = performance.now() + AFTER_EVENT_MS;
      while (pending.size && performance.now() < deadline && mine === lastEvent) {
        await Promise.all(
          [...pending].map(async (row) => {
            if (mine === lastEvent && (await loadRow(row))) {
              pending.delete(row);
              row.dataset.changedAfter = type;
              const text = `updated ${Math.round(performance.now() - started)} ms after your ${type}`;
              setMeta(row, text);
              // one more read shortly after: an answer ranked while the event was half read
              // (user state before it, search items after it) is replaced at once
              await sleep(SETTLE_MS);
              if (mine === lastEvent && (await loadRow(row))) setMeta(row, text);
            }
          }),
        );
        if (pending.size) await sleep(60);
      }
    } finally {
      busy -= 1;
    }
  }

  async function loadAll(note) {
    await Promise.all(
      rows.map(async (row) => {
        if ((await loadRow(row)) || note) setMeta(row, note || "");
      }),
    );
  }

  // ---- cart -----------------------------------------------------------------------------------

  const cartKey = () => "streamrec.cart." + shopper();
  const readCart = () => JSON.parse(localStorage.getItem(cartKey()) || "[]");
  const writeCart = (cart) => localStorage.setItem(cartKey(), JSON.stringify(cart));

  function renderCart() {
    const cart = readCart();
    document.querySelectorAll(".shopper-name").forEach((n) => (n.textContent = shopper()));
    const list = document.getElementById("cart-items");
    list.replaceChildren(
      ...cart.map((line, index) =>
        el(
          "li",
          { "data-item-id": line.item_id },
          el("a", { href: `/shop/p/${encodeURIComponent(line.item_id)}` }, line.title),
          el("span", { class: "price" }, money(line.price)),
          el("button", { type: "button", class: "remove", "data-index": index, title: "Remove from cart" }, "\u00d7"),
        ),
      ),
    );
    document.getElementById("cart-empty").hidden = cart.length > 0;
    document.getElementById("buy-all").disabled = cart.length === 0;
    const priced = cart.filter((line) => line.price !== null && line.price !== undefined);
    const total = priced.reduce((sum, line) => sum + Number(line.price), 0);
    document.getElementById("cart-total").textContent = priced.length ? money(total) : "\u2014";
  }

  function cardInfo(node) {
    const card = node.closest("[data-item-id]");
    const row = node.closest("[data-row]");
    return {
      item_id: card.dataset.itemId,
      title: card.dataset.title || card.dataset.itemId,
      price: card.dataset.price === "" ? null : Number(card.dataset.price),
      // a card in a recommendation row carries that answer's id; the product page carries the id it was opened from
      rid: row ? row.dataset.rid : card.id === "product" ? params.get("rid") : null,
    };
  }

  async function addToCart(info) {
    const ok = await send([{ type: "add_to_cart", item_id: info.item_id, quantity: 1, price: info.price, recommendation_id: info.rid }]);
    if (ok) {
      writeCart([...readCart(), info]);
      renderCart();
    }
  }

  async function buy(lines) {
    const ok = await send(
      lines.map((l) => ({ type: "purchase", item_id: l.item_id, quantity: 1, price: l.price, recommendation_id: l.rid })),
    );
    if (ok) {
      const bought = new Set(lines.map((l) => l.item_id));
      writeCart(readCart().filter((l) => !bought.has(l.item_id)));
      renderCart();
    }
  }

  // ---- wiring ---------------------------------------------------------------------------------

  document.addEventListener("click", (ev) => {
    const target = ev.target.closest("button");
    if (!target || target.disabled) return;
    if (target.id === "buy-all") {
      buy(readCart());
    } else if (target.id === "buy-now") {
      buy([cardInfo(target)]);
    } else if (target.classList.contains("add")) {
      addToCart(cardInfo(target));
    } else if (target.classList.contains("remove")) {
      const cart = readCart();
      const [line] = cart.splice(Number(target.dataset.index), 1);
      if (!line) return;
      send([{ type: "remove_from_cart", item_id: line.item_id, quantity: 1, recommendation_id: line.rid }]).then((ok) => {
        if (ok) {
          writeCart(cart);
          renderCart();
        }
      });
    }
  });

  document.getElementById("search-form").addEventListener("submit", async (ev) => {
    const query = document.getElementById("search-input").value.trim();
    if (!query) return;
    ev.preventDefault();
    // if the API is slow the results page opens anyway: the tracker sends what is queued as the page is left
    await Promise.race([send([{ type: "search", query }]), sleep(SEARCH_WAIT_MS)]);
    location.href = `/shop/?q=${encodeURIComponent(query)}`;
  });

  shopperInput.value = shopper();
  shopperInput.addEventListener("change", () => {
    const name = shopperInput.value.trim();
    if (!name || name === shopper()) return;
    localStorage.setItem(LS_SHOPPER, name);
    renderCart();
    loadAll(`shopper switched to ${name}`);
  });

  renderCart();
  renderLog();
  const product = document.getElementById("product");
  if (product) {
    // opening a product page is a view; one opened from a recommendation carries that answer's id
    loadAll().then(() => send([{ type: "view", item_id: product.dataset.itemId, recommendation_id: params.get("rid") }]));
  } else {
    loadAll();
  }
  setInterval(() => {
    if (!busy && document.visibilityState === "visible") loadAll();
  }, POLL_MS);
})();
