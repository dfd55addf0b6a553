// streamrec.js: the browser tracker of streamrec (docs/tracker.md). An ES module with no dependencies,
// served by the API at /static/streamrec.js:
//
//   import { createTracker } from "https://recs.example.com/static/streamrec.js";
//   const tracker = createTracker({ apiKey: "<publishable events key>", userId: "alice" });
//   tracker.view("camera");
//
// Events are queued and sent to POST /v1/events in batches; what is queued when the page is left goes
// out with fetch(..., {keepalive: true}); 429, 5xx and network errors are retried with backoff (honouring
// Retry-After), never a 400. Each event has its own event_id, so a retry the API already took is folded once.

const EVENTS_PATH = "/v1/events";
// Browsers let a page have at most 64 KiB of keepalive request bodies in flight; some is left to others.
const KEEPALIVE_BYTES = 60 * 1024;
// Events not sent when a page was left wait here for the next page of the same shop, for less than the
// API's dedupe window (15 minutes), so a copy that did arrive after all is still folded once.
const OUTBOX_KEY = "streamrec.outbox";
const OUTBOX_TTL_MS = 10 * 60 * 1000;
const OUTBOX_MAX = 500;
const CLICKS_KEY = "streamrec.clicks";
const CLICKS_MAX = 50;
const SESSION_KEY = "streamrec.session";
const ANONYMOUS_KEY = "streamrec.anonymous";
// the API's error codes (api/errors.py) the tracker acts on
const INVALID_EVENT = 1002;
const BATCH_TOO_LARGE = 1003;

/** Every option and its default (docs/tracker.md, "Options"). */
export const DEFAULTS = Object.freeze({
  apiUrl: null, // the API's base URL; null: the origin this module was loaded from
  apiKey: "", // a publishable key (role "events"): it may only POST /v1/events
  userId: null, // a string, or a function called at each action; null: an anonymous id kept in localStorage
  sessionId: null, // a string or a function; null: one id per browser tab (sessionStorage)
  batchSize: 10, // send as soon as this many events are queued...
  flushInterval: 500, // ...or this many ms after the first of them was queued
  maxBatch: 100, // at most this many events in one request
  maxQueue: 1000, // past this many unsent events the oldest is dropped
  maxAttempts: 8, // tries of one event (429, 5xx, network errors) before it is dropped
  retryBase: 500, // first backoff in ms without Retry-After; doubled each time, with jitter...
  retryMax: 30_000, // ...up to this
  attributionWindow: 30 * 60 * 1000, // ms an item clicked in a recommendation stays attributed to it
  trackClicks: true, // remember clicks on [data-streamrec-item] inside [data-streamrec-rid]
  onError: null, // called with (result, event) for every event that is dropped
});

/** Milliseconds to wait as a ``Retry-After`` value says (delay-seconds or an HTTP date); null if absent or unreadable. */
export function retryAfterMs(value, now = Date.now()) {
  const text = (value || "").trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const at = text ? Date.parse(text) : NaN;
  return Number.isNaN(at) ? null : Math.max(0, at - now);
}

/** A new tracker: see ``DEFAULTS`` for the options. */
export function createTracker(options = {}) {
  return new Tracker(options);
}

function storage(kind) {
  try {
    return globalThis[kind] || null; // reading it throws where storage is blocked
  } catch (_) {
    return null;
  }
}

function readJson(store, key, fallback) {
  try {
    const value = JSON.parse(store.getItem(key));
    return value === null ? fallback : value;
  } catch (_) {
    return fallback;
  }
}

function writeJson(store, key, value) {
  try {
    store.setItem(key, JSON.stringify(value));
  } catch (_) {
    /* full or blocked: the tracker works without it */
  }
}

function newId() {
  const c = globalThis.crypto;
  if (typeof c.randomUUID === "function") return c.randomUUID(); // only in secure contexts (https, localhost)
  const b = c.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** The string kept under ``key`` in ``store``, made and kept on first use. */
function kept(store, key, make) {
  try {
    const value = store && store.getItem(key);
    if (value) return value;
  } catch (_) {
    /* blocked */
  }
  const value = make();
  try {
    if (store) store.setItem(key, value);
  } catch (_) {
    /* full or blocked: one id for this page */
  }
  return value;
}

const bytes = (text) => new TextEncoder().encode(text).length;
const resolved = (value) => (typeof value === "function" ? value() : value);

/** The wire fields of an item event from a helper's options; other options pass as wire fields. */
function itemFields(itemId, options) {
  const { recommendationId, ...rest } = options;
  const fields = { item_id: itemId, ...rest };
  if ("recommendationId" in options) fields.recommendation_id = recommendationId; // null: cite nothing
  return fields;
}

export class Tracker {
  #o;
  #user;
  #queue = []; // records not sent yet, oldest first
  #timer = null; // the flushInterval timer
  #due = false; // the queue is to be sent as soon as the line is free
  #busy = false; // a regular request is on the wire (one at a time, so retries keep the order)
  #retry = null; // {records, due, timer}: what waits out a backoff or Retry-After; it holds the line
  #inflight = new Set(); // {records, keepalive} of every request on the wire
  #warned = new Set();
  #off = [];
  #stopped = false;
  #anonymous = null;

  constructor(options = {}) {
    const unknown = Object.keys(options).filter((k) => !(k in DEFAULTS));
    if (unknown.length) throw new TypeError(`streamrec: unknown option ${unknown.join(", ")} (see DEFAULTS)`);
    const o = { ...DEFAULTS, ...options };
    for (const name of ["batchSize", "maxBatch", "maxQueue", "maxAttempts"]) {
      if (!Number.isInteger(o[name]) || o[name] < 1) throw new TypeError(`streamrec: ${name} must be a whole number of at least 1`);
    }
    this.#o = o;
    this.#user = o.userId;
    /** The API's base URL, without a trailing slash. */
    this.apiUrl = String(o.apiUrl ?? new URL(import.meta.url).origin).replace(/\/+$/, "");
    if (typeof document !== "undefined") {
      this.#listen(document, "visibilitychange", () => document.visibilityState === "hidden" && this.#leave(false));
      this.#listen(globalThis, "pagehide", () => this.#leave(true));
      if (o.trackClicks) {
        this.#listen(document, "click", (ev) => this.#clickedLink(ev), true);
        this.#listen(document, "auxclick", (ev) => this.#clickedLink(ev), true); // the middle button: a new tab
      }
    }
    this.#resume();
  }

  /** The user the next event is sent for. */
  get userId() {
    const user = resolved(this.#user);
    if (user) return String(user);
    this.#anonymous ??= kept(storage("localStorage"), ANONYMOUS_KEY, () => "anon-" + newId());
    return this.#anonymous;
  }

  /** Send the next events for ``userId`` (a string, or a function called at each action). */
  setUser(userId) {
    this.#user = userId;
  }

  get sessionId() {
    return resolved(this.#o.sessionId) || kept(storage("sessionStorage"), SESSION_KEY, () => "web-" + newId().replace(/-/g, "").slice(0, 16));
  }

  // ---- events -----------------------------------------------------------------------------------

  /** A search. Returns a promise of the event's result ({ok, status, eventId, ms, attempts, msg}); it never rejects. */
  search(query, fields = {}) {
    return this.track("search", { query, ...fields });
  }

  /** A product view; ``options``: {recommendationId, price, ...}. */
  view(itemId, options = {}) {
    return this.track("view", itemFields(itemId, options));
  }

  /** An add to cart; ``options``: {quantity, price, recommendationId}. */
  addToCart(itemId, options = {}) {
    return this.track("add_to_cart", itemFields(itemId, options));
  }

  /** A removal from the cart; ``options``: {quantity, price, recommendationId}. */
  removeFromCart(itemId, options = {}) {
    return this.track("remove_from_cart", itemFields(itemId, options));
  }

  /** A purchase of one item; ``options``: {quantity, price, recommendationId}. */
  purchase(itemId, options = {}) {
    return this.track("purchase", itemFields(itemId, options));
  }

  /**
   * Any event of the contract (streamrec/contract.py ``Event``): ``fields`` are its wire fields
   * (item_id, query, quantity, price, recommendation_id, ...); null, undefined and "" are left out. The
   * tracker sets event_id, user_id, session_id and ts (now); a field given here wins. Without a
   * ``recommendation_id`` key, an item clicked in a recommendation within ``attributionWindow`` cites it.
   */
  track(type, fields = {}) {
    const at = performance.now();
    const event = { event_id: newId(), type, user_id: this.userId, ts: Date.now() };
    const session = this.sessionId;
    if (session) event.session_id = session;
    for (const [key, value] of Object.entries(fields)) if (value !== null && value !== undefined && value !== "") event[key] = value;
    if (!("recommendation_id" in fields) && event.item_id !== undefined) {
      const rid = this.attributed(event.item_id);
      if (rid) event.recommendation_id = rid;
    }
    if (type === "search" ? !event.query : event.item_id === undefined) {
      const result = { ok: false, status: 0, eventId: event.event_id, ms: 0, attempts: 0, msg: type === "search" ? "a search needs a query" : `a ${type} needs an item id` };
      console.error(`streamrec: ${result.msg}; not sent`);
      return Promise.resolve(result);
    }
    return this.#enqueue({ event, at, attempts: 0, done: false, persisted: false });
  }

  /** Send what is queued now (a pending Retry-After is still waited out); resolves to the results of every unsettled event. */
  flush() {
    const records = new Set([...this.#queue, ...(this.#retry ? this.#retry.records : [])]);
    for (const request of this.#inflight) for (const r of request.records) records.add(r);
    this.#kick();
    return Promise.all([...records].filter((r) => !r.done).map((r) => r.promise));
  }

  /** Send what is queued with keepalive and stop listening to the page (for a single-page app's teardown). */
  stop() {
    this.#leave(true);
    for (const off of this.#off) off();
    this.#off = [];
    this.#stopped = true;
  }

  // ---- attribution ------------------------------------------------------------------------------

  /** Remember that ``itemId`` was clicked in the answer ``recommendationId``: its next events cite it. */
  clicked(itemId, recommendationId) {
    const store = storage("localStorage");
    if (!store || !itemId || !recommendationId) return;
    const now = Date.now();
    const clicks = readJson(store, CLICKS_KEY, {});
    clicks[itemId] = [String(recommendationId), now]; // the newest click of an item counts
    // the newest CLICKS_MAX still in the window are kept (by time: an object orders integer-like keys first)
    const names = Object.keys(clicks)
      .filter((name) => Array.isArray(clicks[name]) && now - clicks[name][1] <= this.#o.attributionWindow)
      .sort((a, b) => clicks[b][1] - clicks[a][1]);
    writeJson(store, CLICKS_KEY, Object.fromEntries(names.slice(0, CLICKS_MAX).map((name) => [name, clicks[name]])));
  }

  /** The recommendation_id an event of ``itemId`` cites now (the item was clicked in that answer), or null:
   *  for a page that hands it to its backend (an order line, a cart form). */
  attributed(itemId) {
    const store = storage("localStorage");
    const hit = store ? readJson(store, CLICKS_KEY, {})[itemId] : null;
    return Array.isArray(hit) && Date.now() - hit[1] <= this.#o.attributionWindow ? hit[0] : null;
  }

  #clickedLink(ev) {
    const target = ev.target instanceof Element ? ev.target.closest("[data-streamrec-item]") : null;
    const answer = target ? target.closest("[data-streamrec-rid]") : null;
    if (answer) this.clicked(target.dataset.streamrecItem, answer.dataset.streamrecRid);
  }

  // ---- reads ------------------------------------------------------------------------------------

  /**
   * GET /v1/users/{user}/recommendations for the current user (or ``userId``); the other ``params``
   * (k, placement, category, exclude, explain) are sent as they are. Resolves to the answer's ``data``:
   * {items, recommendation_id, strategy, ...}; rejects on an error answer.
   */
  recommendations({ userId, ...params } = {}) {
    return this.#get(`/v1/users/${encodeURIComponent(userId ?? this.userId)}/recommendations`, params);
  }

  /** GET /v1/items/{itemId}/similar (for the current user, unless ``userId: null``); resolves to ``data``. */
  similar(itemId, { userId, ...params } = {}) {
    const user = userId === undefined ? this.userId : userId;
    return this.#get(`/v1/items/${encodeURIComponent(itemId)}/similar`, user ? { ...params, user_id: user } : params);
  }

  async #get(path, params) {
    const url = new URL(this.apiUrl + path);
    for (const [name, value] of Object.entries(params)) {
      for (const one of Array.isArray(value) ? value : [value]) if (one !== null && one !== undefined) url.searchParams.append(name, String(one));
    }
    const resp = await fetch(url, { credentials: "omit", cache: "no-store" });
    const body = await resp.json().catch(() => null);
    if (!resp.ok) throw new Error(`streamrec: GET ${path} answered ${resp.status}: ${body && body.msg ? body.msg : resp.statusText}`);
    return body.data;
  }

  // ---- sending ----------------------------------------------------------------------------------

  #listen(target, type, handler, capture = false) {
    target.addEventListener(type, handler, capture);
    this.#off.push(() => target.removeEventListener(type, handler, capture));
  }

  #enqueue(record) {
    record.promise = new Promise((resolve) => (record.resolve = resolve));
    if (this.#stopped) {
      this.#settle(record, { ok: false, status: 0, msg: "the tracker is stopped" });
      return record.promise;
    }
    this.#queue.push(record);
    while (this.#queue.length > this.#o.maxQueue) {
      this.#warnOnce("queue", `more than ${this.#o.maxQueue} events wait to be sent; the oldest are dropped`);
      this.#settle(this.#queue.shift(), { ok: false, status: 0, msg: "dropped: the queue is full" });
    }
    if (this.#queue.length >= this.#o.batchSize) queueMicrotask(() => this.#kick()); // same-tick events go together
    else if (this.#timer === null) this.#timer = setTimeout(() => this.#kick(), this.#o.flushInterval);
    return record.promise;
  }

  #kick() {
    clearTimeout(this.#timer);
    this.#timer = null;
    this.#due = true;
    this.#pump();
  }

  /** Send the next batch if the queue is due and the line is free (nothing on the wire, no backoff). */
  #pump() {
    if (this.#busy || this.#retry || !this.#queue.length) return;
    if (!this.#due && this.#queue.length < this.#o.batchSize) return;
    const records = this.#queue.splice(0, this.#o.maxBatch);
    if (!this.#queue.length) this.#due = false;
    this.#deliver(records, false);
  }

  async #deliver(records, keepalive) {
    const live = records.filter((r) => !r.done);
    if (!live.length) return this.#pump();
    const request = { records: live, keepalive };
    this.#inflight.add(request);
    if (!keepalive) this.#busy = true;
    let outcome;
    try {
      outcome = await this.#post(live.map((r) => r.event), keepalive);
    } finally {
      this.#inflight.delete(request);
      if (!keepalive) this.#busy = false;
    }
    this.#handle(live, outcome);
    this.#pump();
  }

  async #post(events, keepalive) {
    const headers = { "Content-Type": "application/json" };
    if (this.#o.apiKey) headers["X-API-Key"] = this.#o.apiKey;
    try {
      const resp = await fetch(this.apiUrl + EVENTS_PATH, {
        method: "POST",
        headers,
        body: JSON.stringify(events),
        keepalive,
        credentials: "omit",
        cache: "no-store",
      });
      const body = await resp.json().catch(() => null);
      return {
        status: resp.status,
        code: body ? body.code : undefined,
        msg: body && body.msg ? body.msg : resp.statusText,
        details: body ? body.details : undefined,
        retryAfter: resp.headers.get("Retry-After"),
      };
    } catch (err) {
      return { status: 0, msg: `network error (${err && err.message ? err.message : err})` };
    }
  }

  /** What to do with ``records`` (as they were sent: the API names rows by index) after ``outcome``. */
  #handle(records, outcome) {
    if (records.every((r) => r.done)) return; // another copy of them was taken already
    const { status } = outcome;
    for (const r of records) r.attempts += 1;
    if (status >= 200 && status < 300) {
      for (const r of records) this.#settle(r, { ok: true, status });
      this.#unpersist(records);
      return;
    }
    if (status === 400 && outcome.code === INVALID_EVENT && Array.isArray(outcome.details) && records.length > 1) {
      // only the rows the API named are refused: the others are sent again, at once
      const bad = new Map(outcome.details.map((d) => [d.index, d.reason]));
      if ([...bad.keys()].some((i) => records[i])) {
        this.#errorOnce(outcome, records.filter((_, i) => bad.has(i)).length);
        records.forEach((r, i) => bad.has(i) && this.#settle(r, { ok: false, status, code: outcome.code, msg: bad.get(i) }));
        this.#requeue(records.filter((_, i) => !bad.has(i)));
        return;
      }
    }
    if (status === 400 && outcome.code === BATCH_TOO_LARGE && records.length > 1) {
      this.#o.maxBatch = Math.max(1, Math.floor(records.length / 2)); // this API takes fewer: send halves
      this.#warnOnce("batch", `${outcome.msg}; sending at most ${this.#o.maxBatch} events a request`);
      this.#requeue(records);
      return;
    }
    if (status === 0 || status === 408 || status === 429 || status >= 500) {
      const left = [];
      for (const r of records.filter((x) => !x.done)) {
        if (r.attempts < this.#o.maxAttempts) left.push(r);
        else {
          const hint = status === 0 ? " (the API is unreachable, or this page's origin is not in STREAMREC_CORS_ORIGINS)" : "";
          this.#warnOnce(`gave up ${status}`, `events dropped after ${r.attempts} attempts: ${status || ""} ${outcome.msg}${hint}`);
          this.#settle(r, { ok: false, status, code: outcome.code, msg: outcome.msg });
        }
      }
      if (left.length) this.#wait(left, this.#backoff(outcome, Math.max(...left.map((r) => r.attempts))));
      return;
    }
    // 400, 401, 403, 413, 415...: the same request would get the same answer
    this.#errorOnce(outcome, records.length);
    for (const r of records) this.#settle(r, { ok: false, status, code: outcome.code, msg: outcome.msg });
  }

  #requeue(records) {
    this.#queue.unshift(...records.filter((r) => !r.done));
    this.#due = true;
  }

  /** Retry-After when the answer has one, else exponential backoff with jitter. */
  #backoff(outcome, attempts) {
    const asked = retryAfterMs(outcome.retryAfter);
    if (asked !== null) return asked + Math.random() * 100; // never before the API said, and not all at once
    const ceiling = Math.min(this.#o.retryMax, this.#o.retryBase * 2 ** (attempts - 1));
    return ceiling / 2 + (Math.random() * ceiling) / 2;
  }

  #wait(records, ms) {
    const due = Date.now() + ms;
    if (this.#retry) {
      clearTimeout(this.#retry.timer);
      this.#retry.records.push(...records);
      this.#retry.due = Math.max(this.#retry.due, due);
    } else {
      this.#retry = { records, due };
    }
    this.#retry.timer = setTimeout(() => {
      const waited = this.#retry.records;
      this.#retry = null;
      this.#requeue(waited.filter((r) => !r.done)); // first, topped up with what was queued meanwhile
      this.#pump();
    }, Math.max(0, this.#retry.due - Date.now()));
  }

  #settle(record, result) {
    if (record.done) return;
    record.done = true;
    const full = { eventId: record.event.event_id, attempts: record.attempts, ms: Math.round(performance.now() - record.at), ...result };
    if (!full.ok && typeof this.#o.onError === "function") {
      try {
        this.#o.onError(full, record.event);
      } catch (err) {
        console.error("streamrec: onError threw", err);
      }
    }
    record.resolve(full);
  }

  #errorOnce(outcome, count) {
    const key = `${outcome.status} ${outcome.code}`;
    if (this.#warned.has(key)) return;
    this.#warned.add(key);
    console.error(`streamrec: POST ${EVENTS_PATH} answered ${outcome.status}: ${outcome.msg}; ${count} event(s) dropped, not retried`);
  }

  #warnOnce(key, text) {
    if (this.#warned.has(key)) return;
    this.#warned.add(key);
    console.warn(`streamrec: ${text}`);
  }

  // ---- leaving the page ---------------------------------------------------------------------------

  /**
   * The page is hidden (it may never be shown again) or left (``unloading``): what is queued goes now with
   * fetch keepalive, which outlives the page and, unlike sendBeacon, carries the X-API-Key header. On
   * pagehide, events of a regular request still on the wire go too (the page's own fetches are cancelled;
   * a copy that arrives twice is folded once). What waits out a Retry-After, and what does not fit the
   * keepalive budget, is also kept in localStorage for the next page of this shop.
   */
  #leave(unloading) {
    if (this.#stopped) return;
    clearTimeout(this.#timer);
    this.#timer = null;
    const carried = new Set();
    for (const request of this.#inflight) if (request.keepalive || !unloading) for (const r of request.records) carried.add(r);
    const sending = [];
    if (unloading) for (const request of this.#inflight) if (!request.keepalive) sending.push(...request.records.filter((r) => !r.done));
    sending.push(...this.#queue.filter((r) => !r.done && !carried.has(r)));
    this.#queue = [];
    this.#due = false;
    let budget = KEEPALIVE_BYTES;
    const left = [];
    for (let i = 0; i < sending.length; i += this.#o.maxBatch) {
      const chunk = sending.slice(i, i + this.#o.maxBatch);
      const size = bytes(JSON.stringify(chunk.map((r) => r.event)));
      if (size <= budget) {
        budget -= size;
        this.#deliver(chunk, true);
      } else {
        left.push(...chunk);
      }
    }
    this.#queue = left; // if the page lives on, they go with the next requests
    this.#due = left.length > 0;
    const waiting = this.#retry ? this.#retry.records.filter((r) => !r.done) : [];
    this.#persist([...left, ...waiting], this.#retry ? this.#retry.due : Date.now());
  }

  #persist(records, due) {
    const store = storage("localStorage");
    const fresh = records.filter((r) => !r.persisted);
    if (!store || !fresh.length) return;
    const box = readJson(store, OUTBOX_KEY, []);
    for (const r of fresh) {
      r.persisted = true;
      box.push({ event: r.event, due, saved: Date.now() });
    }
    writeJson(store, OUTBOX_KEY, box.slice(-OUTBOX_MAX));
  }

  #unpersist(records) {
    const store = storage("localStorage");
    const ids = new Set(records.filter((r) => r.persisted).map((r) => r.event.event_id));
    if (!store || !ids.size) return;
    writeJson(store, OUTBOX_KEY, readJson(store, OUTBOX_KEY, []).filter((entry) => !ids.has(entry.event.event_id)));
  }

  /** Events an earlier page of this shop could not send: queued again, not before their Retry-After. */
  #resume() {
    const store = storage("localStorage");
    const box = store ? readJson(store, OUTBOX_KEY, []) : [];
    if (!Array.isArray(box) || !box.length) return;
    store.removeItem(OUTBOX_KEY);
    const now = Date.now();
    const records = box
      .filter((entry) => entry && entry.event && now - entry.saved < OUTBOX_TTL_MS)
      .map((entry) => ({ event: entry.event, at: performance.now(), attempts: 0, done: false, persisted: false, due: entry.due }));
    for (const r of records) r.promise = new Promise((resolve) => (r.resolve = resolve));
    if (!records.length) return;
    const due = Math.max(...records.map((r) => r.due || 0));
    if (due > now) {
      this.#wait(records, due - now);
    } else {
      this.#requeue(records);
      queueMicrotask(() => this.#pump());
    }
  }
}
