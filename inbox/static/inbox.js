// The web inbox: three panes filled from the inbox API (/api/v1), live through one EventSource.
// Our own small script: no framework, nothing loaded from elsewhere. Every request sends the
// session cookie (same origin) and, when unsafe, the X-CSRF-Token from the page's meta tag.
"use strict";
(function () {
  const $ = (sel, root = document) => root.querySelector(sel);
  const CSRF = $('meta[name="csrf-token"]').content;
  const ME = Number(document.body.dataset.userId);
  const ADMIN = document.body.dataset.role === "admin";
  const TICKS = {sent: "✓", delivered: "✓✓", read: "✓✓", played: "✓✓", failed: "✗"};

  const state = {status: "open", assignee: "all", q: "", page: 1, open: null, detail: null, waiting: false, number: ""};

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k.startsWith("data-") || k.startsWith("aria-") || k === "role" || k === "type" || k === "title")
        node.setAttribute(k, v === true ? "" : String(v));
      else node[k] = v;
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return d.toLocaleString([], {dateStyle: "short", timeStyle: "short"});
  }

  function flash(text, isError = true) {
    const f = $("#flash");
    f.textContent = text;
    f.className = isError ? "flash error" : "flash";
    f.hidden = false;
    clearTimeout(flash.timer);
    flash.timer = setTimeout(() => { f.hidden = true; }, 6000);
  }

  // --- the API ------------------------------------------------------------------------------
  async function call(method, path, body) {
    const opts = {method, credentials: "same-origin", headers: {}};
    if (method !== "GET") {
      opts.headers["X-CSRF-Token"] = CSRF;
      if (body instanceof FormData) {
        opts.body = body;  // a file: multipart, its boundary set by the browser
      } else {
        opts.headers["Content-Type"] = "application/json";
        opts.body = JSON.stringify(body || {});
      }
    }
    let r;
    try {
      r = await fetch("/api/v1/" + path, opts);
    } catch (e) {
      flash("The server cannot be reached; the page retries when it is back.");
      throw e;
    }
    const data = await r.json().catch(() => ({ok: false, error: `HTTP ${r.status}`}));
    if (r.status === 401) {
      window.location.assign("/login");
      throw new Error("signed out");
    }
    if (!r.ok) {
      const err = new Error(data.error || `HTTP ${r.status}`);
      err.status = r.status; err.code = data.code; err.body = data;
      throw err;
    }
    return data;
  }

  // A view refetched live can have two GETs in flight, and answers can come back out of order: a
  // slow answer from before an action must never overwrite the answer from after it. Each view
  // numbers its requests; an answer older than the one the view last showed resolves to null.
  const asked = {}, shown = {};
  async function latest(view, path) {
    const n = asked[view] = (asked[view] || 0) + 1;
    const data = await call("GET", path);
    if (n < (shown[view] || 0)) return null;
    shown[view] = n;
    return data;
  }

  async function act(method, path, body, done) {
    try {
      const data = await call(method, path, body);
      if (done) await done(data);
      return data;
    } catch (e) {
      if (e.message !== "signed out") flash(e.message);
      return null;
    }
  }

  // --- narrow screens: one pane at a time -----------------------------------------------------
  const panes = $("main.panes");
  function show(view) {
    panes.dataset.view = view;
    $("#back").hidden = view === "list";
  }
  $("#back").addEventListener("click", () => show(panes.dataset.view === "info" ? "thread" : "list"));
  $("#show-info").addEventListener("click", () => { show("info"); $("#lead-stage").focus(); });

  // --- the conversation list -------------------------------------------------------------------
  async function loadList() {
    const params = new URLSearchParams({status: state.status, assignee: state.assignee, page: state.page});
    if (state.q) params.set("q", state.q);
    if (state.number) params.set("number", state.number);
    if (state.waiting) { params.set("waiting", "true"); params.set("status", "all"); }
    let data;
    try { data = await latest("list", "conversations?" + params); } catch (e) { return; }
    if (!data) return;
    const counts = data.meta.counts;
    for (const node of document.querySelectorAll("[data-count]")) {
      const k = node.dataset.count;
      if (k === "all") node.textContent = counts.open + counts.pending + counts.resolved + counts.snoozed;
      else if (k === "mine") node.textContent = `mine ${counts.mine}`;
      else if (k === "unassigned" && node.closest(".assignee-counts")) node.textContent = `unassigned ${counts.unassigned}`;
      else node.textContent = counts[k] !== undefined ? counts[k] : "";
    }
    const list = $("#conversations");
    const focused = document.activeElement && document.activeElement.closest("[data-conversation-id]");
    const focusedId = focused ? focused.dataset.conversationId : null;
    list.replaceChildren(...data.conversations.map(renderItem));
    if (!data.conversations.length) list.append(el("li", {class: "empty", text: state.waiting ? "Nobody is waiting for a person." : "No conversations here."}));
    if (focusedId) { const again = list.querySelector(`[data-conversation-id="${focusedId}"] button`); if (again) again.focus(); }
    $("#page-no").textContent = data.meta.page;
    $("#prev-page").disabled = state.page <= 1;
    $("#next-page").disabled = data.conversations.length < data.meta.per_page;
  }

  function renderItem(c) {
    const name = c.contact.name || c.contact.phone || `#${c.id}`;
    const owner = c.assignee_id === null ? "unassigned" : (c.assignee_id === ME ? "mine" : `user ${c.assignee_id}`);
    const unread = c.unread_count > 0;
    const wait = c.waiting ? waitWords(c.waiting) : null;
    // several numbers (the page offers a number filter): each conversation says which one it is with
    const number = c.number && $("#filters").number ? (c.number.label || c.number.display_phone_number || c.number.phone_number_id) : "";
    return el("li", {"data-conversation-id": c.id, "data-waiting": c.waiting ? "true" : null,
                     "data-number": c.number ? c.number.phone_number_id : null,
                     class: "conv" + (c.id === state.open ? " current" : "") + (unread ? " unread" : "") + (c.waiting ? " waiting" : "")},
      el("button", {type: "button", "aria-current": c.id === state.open ? "true" : null,
                    "aria-label": `${name}, ${wait || c.status + ", " + owner}` + (unread ? `, ${c.unread_count} unread` : ""),
                    onclick: () => openConversation(c.id, true)},
        el("span", {class: "name", text: name}),
        unread ? el("span", {class: "unread-mark", "aria-hidden": "true", text: String(c.unread_count)}) : null,
        el("span", {class: "preview", text: c.last_message_preview || ""}),
        wait ? el("span", {class: "wait", text: wait}) : null,
        el("span", {class: "meta", text: `${c.status} · ${owner}` + (c.lead ? ` · ${c.lead.stage}` : "") + ` · ${when(c.last_message_at)}`}),
        number ? el("span", {class: "number", text: `to ${number}`}) : null));
  }

  $("#filters").addEventListener("submit", (ev) => ev.preventDefault());
  for (const b of document.querySelectorAll("[data-status]")) {
    b.addEventListener("click", () => {
      state.status = b.dataset.status; state.page = 1; setWaitingView(false);
      for (const o of document.querySelectorAll("[data-status]")) o.setAttribute("aria-pressed", String(o === b));
      loadList();
    });
  }
  $("#filters").assignee.addEventListener("change", (ev) => { state.assignee = ev.target.value; state.page = 1; loadList(); });
  if ($("#filters").number) $("#filters").number.addEventListener("change", (ev) => { state.number = ev.target.value; state.page = 1; loadList(); });
  let searchTimer;
  $("#filters").q.addEventListener("input", (ev) => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => { state.q = ev.target.value.trim(); state.page = 1; loadList(); }, 250);
  });
  $("#prev-page").addEventListener("click", () => { state.page -= 1; loadList(); });
  $("#next-page").addEventListener("click", () => { state.page += 1; loadList(); });

  // --- the thread ------------------------------------------------------------------------------
  async function openConversation(id, moveFocus) {
    if (id !== state.open) switchDraft(id);
    state.open = id;
    for (const li of document.querySelectorAll("#conversations [data-conversation-id]")) {
      const here = Number(li.dataset.conversationId) === id;
      li.classList.toggle("current", here);
      li.querySelector("button").setAttribute("aria-current", here ? "true" : "false");
    }
    await loadThread();
    show("thread");
    if (moveFocus) $("#reply textarea").focus();
  }

  async function loadThread(before) {
    if (state.open === null) return;
    const id = state.open;
    let data;
    try {
      data = before ? await call("GET", `conversations/${id}?before=${before}`)  // paging back: not a refetch
                    : await latest("thread", `conversations/${id}`);
    } catch (e) {
      if (e.status === 404) { closeThread(); loadList(); }
      return;
    }
    if (!data || state.open !== id) return;
    const c = data.conversation;
    if (before) {  // paging back: older messages go on top
      const list = $("#messages");
      list.prepend(...c.messages.map(renderMessage));
      $("#older").hidden = !c.more_before;
      $("#older").dataset.before = firstId(c.messages);
      return;
    }
    state.detail = c;
    renderThread(c);
    renderInfo(c);
  }

  function closeThread() {
    switchDraft(null);
    state.open = null; state.detail = null;
    $("#thread").hidden = true; $("#no-thread").hidden = false; $("#info").hidden = true;
    show("list");
  }

  // A reply that failed before Meta took it has no message id (only its ledger row's, outbound_id).
  function firstId(messages) {
    const m = messages.find((x) => x.id !== null);
    return m ? m.id : "";
  }

  function tick(status, error) {
    const label = status === "failed" ? `failed${error ? ": " + errorWords(error) : ""}` : status;
    return el("span", {class: `tick ${status}`, "data-status": status, title: label, "aria-label": label},
      TICKS[status] || "…");
  }

  // The time shown is when the message was sent: Meta's time for the customer's, the Graph API's
  // acceptance for ours (a reply never sent shows when it was written, marked so).
  function renderMessage(m) {
    const mine = m.direction === "outbound";
    const at = m.sent_at || m.created_at;
    const failed = mine && m.status === "failed";
    return el("li", {"data-message-id": m.id === null ? null : m.id, "data-outbound-id": m.outbound_id,
                     "data-status": m.status || null, "data-at": m.created_at,
                     class: `msg ${m.direction}` + (m.author ? " person" : "") + (failed ? " failed" : "")
                       + (m.source === "business_app" ? " business-app" : "") + (m.deleted_at ? " deleted" : "")},
      renderMedia(m.media),
      m.media ? (captionOf(m) ? el(m.deleted_at ? "del" : "div", {class: "body", text: captionOf(m)}) : null)
              : el(m.deleted_at ? "del" : "div", {class: "body", text: m.body || `[${m.type}]`}),
      el("div", {class: "meta"},
        el("time", {dateTime: at, title: m.sent_at ? "sent" : "written (never sent)", text: when(at)}),
        mine && m.author ? el("span", {text: m.author === ME ? " · you" : ` · user ${m.author}`}) : null,
        m.source === "business_app" ? el("span", {class: "source", text: " · WhatsApp Business app"})
          : mine && !m.author ? el("span", {text: " · bot"}) : null,
        m.edited_at ? el("span", {class: "edited", title: editsWords(m), text: " · edited"}) : null,
        m.deleted_at ? el("span", {class: "deleted",
          text: m.deleted_by_customer ? " · deleted by the customer" : " · deleted in the WhatsApp Business app"}) : null,
        mine && m.status ? tick(m.status, m.error) : null),
      failed ? el("div", {class: "error failure"},
        el("span", {class: "reason", text: `Not delivered${m.error ? ": " + errorWords(m) : ""}`}),
        m.retryable && m.outbound_id ? el("button", {type: "button", class: "retry", text: "Retry",
          "aria-label": "Retry sending this reply", onclick: (ev) => retry(m.outbound_id, ev.target)}) : null)
        : null);
  }

  function bytes(n) {
    if (n === null || n === undefined) return "";
    return n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(0)} KB` : `${(n / 1048576).toFixed(1)} MB`;
  }

  // A customer's file, through GET /api/v1/media/{id} (the session cookie goes with it): an image or a
  // sticker inline (a click opens it full size), players for audio and video, a document as a named
  // download with its size; while it is not here, what became of it.
  const MEDIA_WORDS = {pending: "downloading…", failed: "could not be downloaded",
                       too_large: "too large to download (above WhatsApp's limit)",
                       expired: "removed after the retention period"};
  function renderMedia(x) {
    if (!x) return null;
    if (x.state !== "stored") {
      const words = MEDIA_WORDS[x.state] || x.state;
      const why = x.state === "failed" && x.error ? x.error : "";
      return el("div", {class: `media media-${x.state}`, "data-media-state": x.state, "data-media-id": x.id,
                        title: why || null,
                        text: `${x.type === "document" && x.filename ? x.filename : x.type}: ${words}` +
                              (why ? ` (${why.length > 60 ? why.slice(0, 60) + "…" : why})` : "")});
    }
    const attrs = {class: `media ${x.type}`, "data-media-state": "stored", "data-media-id": x.id};
    if (x.type === "image" || x.type === "sticker")
      return el("a", {...attrs, href: x.url, target: "_blank", rel: "noopener", title: "Open full size"},
        el("img", {src: x.url, alt: x.caption || x.type, loading: "lazy"}));
    if (x.type === "audio") return el("audio", {...attrs, src: x.url, controls: true, preload: "metadata"});
    if (x.type === "video") return el("video", {...attrs, src: x.url, controls: true, preload: "metadata"});
    return el("a", {...attrs, href: x.url, download: x.filename || "",
                    text: `Document: ${x.filename || "unnamed"} (${bytes(x.size)})`});
  }

  // A media message's text without the "[image] " its stored body starts with (an edit may replace it all);
  // a document without a caption has its file name there, shown on the download already.
  function captionOf(m) {
    const text = (m.body || "").replace(/^\[[^\]]*\]\s?/, "");
    return text === m.media.filename ? "" : text;
  }

  // The earlier texts of an edited message, for its "edited" mark's tooltip.
  function editsWords(m) {
    return (m.edits || []).map((e) => `${when(e.at)}: ${e.body || ""}`).join("\n") || "edited";
  }

  async function retry(outboundId, button) {
    button.disabled = true;  // once: a second click would be refused (409 NOT_RETRYABLE)
    const done = await act("POST", `outbound/${outboundId}/retry`, {}, () => flash("Sending it again.", false));
    if (!done) button.disabled = false;
    loadThread();
  }

  function renderOutbound(o) {
    return el("li", {"data-outbound-id": o.id, "data-state": o.state, "data-at": o.created_at, class: "msg outbound pending"},
      el("div", {class: "body", text: o.text || (o.template ? `[template ${o.template.name}]` : "")}),
      el("div", {class: "meta"}, el("span", {class: "state", text: `sending · ${o.state}`})),
      o.error ? el("div", {class: "error", text: errorWords(o)}) : null);
  }

  function windowOpen(c) {
    return c.window_open_until && new Date(c.window_open_until) > new Date();
  }

  function renderThread(c) {
    $("#no-thread").hidden = true;
    $("#thread").hidden = false;
    const name = c.contact.name || c.contact.phone || `#${c.id}`;
    $("#thread-title").textContent = name;
    const owner = ownerWords(c);
    $("#thread-meta").textContent = `${c.contact.phone || ""} · ${c.status}` +
      (c.snoozed_until ? ` until ${when(c.snoozed_until)}` : "") + ` · owner: ${owner}`;
    renderWaiting(c);
    $("#take-over").hidden = c.assignee_id === ME;
    $("#hand-back").hidden = c.assignee_id === null && !c.business_app_since;
    $("#resolve").hidden = c.status === "resolved";
    $("#reopen").hidden = c.status === "open";
    const bot = $("#bot-toggle");
    bot.setAttribute("aria-pressed", String(c.bot_paused));
    bot.textContent = c.bot_paused ? "Resume bot" : "Pause bot";
    bot.title = c.bot_paused ? "The bot is paused here: it does not answer this customer" : "The bot answers here";
    const list = $("#messages");
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    const same = list.dataset.shown === String(c.id);
    const first = firstId(c.messages) || Infinity;
    // older pages the person loaded stay when a live refetch brings the newest page again
    const older = same ? [...list.querySelectorAll("[data-message-id]")].filter((li) => Number(li.dataset.messageId) < first) : [];
    list.replaceChildren(...older, ...inTimeOrder(c.messages.map(renderMessage), (c.outbound || []).map(renderOutbound)));
    if (atBottom || !same) list.scrollTop = list.scrollHeight;
    list.dataset.shown = String(c.id);
    if (!older.length) {
      $("#older").hidden = !c.more_before;
      $("#older").dataset.before = firstId(c.messages);
    }

    const open = windowOpen(c);
    const ws = $("#window-state");
    ws.textContent = open ? `24-hour window open until ${when(c.window_open_until)}.`
                          : "The 24-hour window is closed: only a template can be sent.";
    ws.className = "window " + (open ? "open" : "closed");
    $("#reply textarea").disabled = !open;
    $("#reply button[type=submit]").disabled = !open;
    $("#attach").disabled = !open;
    $("#attach-label").setAttribute("aria-disabled", String(!open));
    $("#templates").hidden = open;  // outside the window only a template (approved at Meta) can go
    renderTemplatePicker(c);
  }

  // --- the info pane ---------------------------------------------------------------------------
  function facts(dl, pairs) {
    dl.replaceChildren();
    for (const [k, v] of pairs) {
      if (v === null || v === undefined || v === "") continue;
      dl.append(el("dt", {text: k}), el("dd", {text: String(v)}));
    }
  }

  const stages = (document.body.dataset.stages || "").split(",").filter(Boolean);
  function renderInfo(c) {
    $("#info").hidden = false;
    facts($("#contact"), [["Name", c.contact.name], ["Phone", c.contact.phone], ["WhatsApp id", c.contact.wa_id],
                          ["Marketing", c.marketing_opt_out ? "opted out: no marketing templates (the customer said stop)" : null]]);
    const form = $("#contact-form");
    if (form.hidden || form.dataset.contactId !== String(c.contact.id)) {
      form.hidden = form.hidden || form.dataset.contactId !== String(c.contact.id);
      form.dataset.contactId = c.contact.id;
      field("name").value = c.contact.name || "";
      field("phone").value = c.contact.phone || "";
    }
    const sel = $("#lead-stage");
    const lead = c.lead;
    sel.disabled = !lead || !lead.id;
    const known = stages;
    const options = known.includes(lead && lead.stage) || !lead ? known : [...known, lead.stage];
    if (document.activeElement !== sel) {
      sel.replaceChildren(...options.map((s) => el("option", {value: s, text: s})));
      if (lead && lead.stage) sel.value = lead.stage;
    }
    $("#lead-meta").textContent = lead && lead.id ? `score ${lead.score ?? "–"}` + (lead.stage_set_by ? ` · set by ${lead.stage_set_by}` : "") : "no lead";
    const i = c.intelligence || {};
    facts($("#intel"), [["Summary", i.summary], ["Intent", i.intent], ["Suggested stage", i.lead_stage],
                        ["Score", i.lead_score], ["Sentiment", i.sentiment], ["Refreshed", when(i.refreshed_at)]]);
    if (!$("#intel").children.length) $("#intel").append(el("dd", {text: "Not computed yet."}));
    $("#notes").replaceChildren(...(c.notes || []).map((n) =>
      el("li", {"data-note-id": n.id}, el("span", {text: n.text}),
         el("span", {class: "muted", text: ` · ${n.author === ME ? "you" : "user " + n.author} · ${when(n.created_at)}`}))));
  }

  const field = (name) => $(`#contact-form [name=${name}]`);
  function editContact(focusPhone) {
    $("#contact-form").hidden = false;
    $("#contact-error").hidden = true;
    show("info");
    field(focusPhone ? "phone" : "name").focus();
  }
  $("#edit-contact").addEventListener("click", () => editContact(false));
  $("#contact-cancel").addEventListener("click", () => { $("#contact-form").hidden = true; $("#edit-contact").focus(); });
  $("#contact-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const form = ev.target, id = form.dataset.contactId;
    const body = {name: field("name").value.trim(), phone: field("phone").value.trim()};
    if (!body.name) delete body.name;
    try {
      await call("PATCH", `contacts/${id}`, body);
      form.hidden = true;
      flash("Contact saved. Retry a failed reply to send it to the new number.", false);
      loadThread(); loadList();
    } catch (e) {
      if (e.message === "signed out") return;
      const err = $("#contact-error");
      err.textContent = e.message;
      err.hidden = false;
      field(e.message.includes("phone") ? "phone" : "name").focus();
    }
  });

  $("#lead-stage").addEventListener("change", (ev) =>
    act("POST", `conversations/${state.open}/lead`, {stage: ev.target.value}, () => { loadThread(); loadList(); }));
  $("#refresh-intel").addEventListener("click", (ev) => {
    ev.target.disabled = true;
    act("POST", `conversations/${state.open}/intelligence/refresh`, {}, loadThread)
      .finally(() => { ev.target.disabled = false; });
  });
  $("#note-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = ev.target.note.value.trim();
    if (!text) return;
    act("POST", `conversations/${state.open}/notes`, {text}, () => { ev.target.note.value = ""; return loadThread(); });
  });

  // --- actions on the open conversation ---------------------------------------------------------
  const refreshOpen = () => Promise.all([loadThread(), loadList()]);
  $("#take-over").addEventListener("click", () => act("POST", `conversations/${state.open}/assign`, {}, refreshOpen));
  $("#hand-back").addEventListener("click", () => act("POST", `conversations/${state.open}/release`, {}, refreshOpen));
  $("#resolve").addEventListener("click", () => act("POST", `conversations/${state.open}/status`, {status: "resolved"}, refreshOpen));
  $("#bot-toggle").addEventListener("click", (ev) => act("POST", `conversations/${state.open}/bot`,
    {paused: ev.target.getAttribute("aria-pressed") !== "true"}, refreshOpen));
  $("#reopen").addEventListener("click", () => act("POST", `conversations/${state.open}/status`, {status: "open"}, refreshOpen));
  $("#snooze").addEventListener("click", () => {
    const input = $("#snooze-until");
    if (!input.value) {  // a sensible default the person can change: an hour from now
      const d = new Date(Date.now() + 3600e3);
      d.setMinutes(d.getMinutes() - d.getTimezoneOffset());
      input.value = d.toISOString().slice(0, 16);
      input.focus();
      flash("Choose when the conversation comes back, then press Snooze again.", false);
      return;
    }
    act("POST", `conversations/${state.open}/status`,
        {status: "snoozed", snoozed_until: new Date(input.value).toISOString()}, refreshOpen);
  });
  const del = $("#delete");
  if (del) del.addEventListener("click", () => {
    if (!window.confirm("Delete this conversation? An admin can restore it from Deleted.")) return;
    act("POST", `admin/conversations/${state.open}/delete`, {}, () => { closeThread(); loadList(); loadDeleted(); });
  });
  $("#older").addEventListener("click", (ev) => loadThread(ev.target.dataset.before));

  // --- replying --------------------------------------------------------------------------------
  function newKey() {
    return (window.crypto && crypto.randomUUID) ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`;
  }

  async function send(payload) {
    const id = state.open;
    try {
      await call("POST", `conversations/${id}/messages`, payload);
      if (state.open === id) showSendError(null);  // an old error must not stay under the form
      return true;
    } catch (e) {
      if (state.open === id && e.message !== "signed out") showSendError(e.body || e);
      if (e.code === "WINDOW_CLOSED") {
        if (state.detail) { state.detail.templates = e.body.templates; state.detail.window_open_until = null; renderThread(state.detail); }
        $("#template-pick").focus();
      }
      return false;
    } finally {
      if (state.open === id) loadThread();
    }
  }

  const reply = $("#reply");
  let pendingKey = null;  // the same key until the reply is accepted: a retried click sends once
  reply.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (attached && state.open !== null) return sendAttachment();
    const box = reply.text;
    const text = box.value.trim();
    if (!text || state.open === null) return;
    pendingKey = pendingKey || newKey();
    const button = reply.querySelector("button[type=submit]");
    button.disabled = true;
    const id = state.open;
    if (await send({text, idempotency_key: pendingKey})) {
      clearDraft(id);
      if (state.open === id) { box.value = ""; pendingKey = null; }
    }
    button.disabled = !windowOpen(state.detail || {});
    box.focus();
  });
  reply.text.addEventListener("input", () => { pendingKey = null; saveDraft(); });

  // A file to send: chosen with the attach button or dropped on the reply box; the text is its caption.
  // The server tells its type by its bytes and holds it to WhatsApp's limits: a refusal (415, 413)
  // is shown under the form in words, and the file stays attached to change or remove.
  let attached = null;
  function attach(file) {
    attached = file || null;
    pendingKey = null;  // another file is another reply
    const box = $("#attachment");
    box.hidden = !attached;
    box.querySelector(".name").textContent = attached ? attached.name : "";
    box.querySelector(".size").textContent = attached ? `(${bytes(attached.size)})` : "";
    if (!attached) $("#attach").value = "";
    showSendError(null);
  }
  async function sendAttachment() {
    const box = reply.text, button = reply.querySelector("button[type=submit]"), id = state.open;
    pendingKey = pendingKey || newKey();
    const form = new FormData();
    form.append("idempotency_key", pendingKey);
    if (box.value.trim()) form.append("caption", box.value.trim());
    form.append("file", attached, attached.name);
    button.disabled = true;
    if (await send(form)) {
      clearDraft(id);
      if (state.open === id) { box.value = ""; pendingKey = null; attach(null); }
    }
    button.disabled = !windowOpen(state.detail || {});
  }
  $("#attach").addEventListener("change", (ev) => attach(ev.target.files[0]));
  $("#attach-remove").addEventListener("click", () => attach(null));
  reply.addEventListener("dragover", (ev) => {
    if (!ev.dataTransfer || ![...ev.dataTransfer.types].includes("Files") || $("#attach").disabled) return;
    ev.preventDefault();
    reply.classList.add("dropping");
  });
  reply.addEventListener("dragleave", () => reply.classList.remove("dropping"));
  reply.addEventListener("drop", (ev) => {
    reply.classList.remove("dropping");
    if (!ev.dataTransfer || !ev.dataTransfer.files.length || $("#attach").disabled) return;
    ev.preventDefault();
    attach(ev.dataTransfer.files[0]);
  });
  reply.text.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); reply.requestSubmit(); }
  });
  $("#template-pick").addEventListener("change", () => { renderTemplateFields(pickedTemplate()); });
  $("#send-template").addEventListener("click", async () => {
    const t = pickedTemplate();
    if (!t || !templateComplete()) { flash("Fill in every field of the template first."); return; }
    const id = state.open;
    $("#send-template").disabled = true;
    if (await send({template: {name: t.name, language: t.language, parameters: templateParameters(t)},
                    idempotency_key: newKey()}) && state.open === id) {
      $("#template-pick").value = "";
      renderTemplateFields(null);
    } else updateTemplatePreview();
  });

  // --- drawers: notifications, tasks, deleted ---------------------------------------------------
  function drawer(buttonId, drawerId, load) {
    const button = $(buttonId), box = $(drawerId);
    if (!button || !box) return;
    button.addEventListener("click", () => {
      const opening = box.hidden;
      for (const other of document.querySelectorAll(".drawer")) other.hidden = true;
      for (const b of document.querySelectorAll("[aria-controls]")) b.setAttribute("aria-expanded", "false");
      box.hidden = !opening;
      button.setAttribute("aria-expanded", String(opening));
      if (opening) { load(); const first = box.querySelector("button, select"); if (first) first.focus(); }
    });
    box.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape") { box.hidden = true; button.setAttribute("aria-expanded", "false"); button.focus(); }
    });
  }

  async function loadBell() {
    let data;
    try { data = await latest("bell", "notifications"); } catch (e) { return; }
    if (!data) return;
    const count = $("#bell-count");
    count.textContent = data.meta.unread;
    count.hidden = !data.meta.unread;
    $("#bell-btn").setAttribute("aria-label", `Notifications, ${data.meta.unread} unread`);
    const list = $("#bell-list");
    list.replaceChildren(...data.notifications.map((n) =>
      el("li", {"data-notification-id": n.id, "data-for-conversation": n.conversation_id,
                class: (n.read_at ? "read" : "unread") + (n.done ? " done" : "")},
        customerLink(n),
        el("span", {class: "body", text: n.body || n.kind}),
        n.done ? el("span", {class: "muted", text: " · handled"}) : null,
        el("span", {class: "muted", text: ` · ${when(n.created_at)}`}),
        n.conversation_id ? el("button", {type: "button", text: "Open", onclick: () => openConversation(n.conversation_id, true)}) : null,
        n.read_at ? null : el("button", {type: "button", text: "Mark read",
          onclick: () => act("POST", `notifications/${n.id}/read`, {}, loadBell)}),
        el("button", {type: "button", text: "Snooze", class: "snooze",
          onclick: () => act("POST", `notifications/${n.id}/snooze`,
            {until: new Date(Date.now() + Number($("#bell-snooze-for").value) * 1000).toISOString()}, loadBell)}))));
    if (!data.notifications.length) list.append(el("li", {class: "empty", text: "Nothing new."}));
  }

  async function loadTasks() {
    let data;
    try { data = await latest("tasks", "tasks?state=open"); } catch (e) { return; }
    if (!data) return;
    const count = $("#tasks-count");
    count.textContent = data.tasks.length;
    count.hidden = !data.tasks.length;
    const list = $("#task-list");
    list.replaceChildren(...data.tasks.map((t) =>
      el("li", {"data-task-id": t.id, "data-for-conversation": t.conversation_id, "data-kind": t.kind},
        customerLink(t),
        el("span", {class: "body", text: t.title || t.kind}),
        t.reason_text ? el("span", {class: "reason", text: sentence(t.reason_text) + (t.next_step ? " " + t.next_step : "")}) : null,
        el("span", {class: "muted", text: ` · ${t.kind} · ${when(t.created_at)}`}),
        t.conversation_id ? el("button", {type: "button", text: "Open", onclick: () => openConversation(t.conversation_id, true)}) : null,
        t.kind === "invalid_recipient" && t.contact_id && t.conversation_id ? el("button", {type: "button",
          class: "fix-contact", text: "Fix contact", "aria-label": "Fix the contact's phone, then retry the reply",
          onclick: async () => { $("#tasks").hidden = true; await openConversation(t.conversation_id, false); editContact(true); }}) : null,
        el("button", {type: "button", text: "Done", onclick: () => act("POST", `tasks/${t.id}/done`, {}, loadTasks)}))));
    if (!data.tasks.length) list.append(el("li", {class: "empty", text: "No open tasks."}));
  }

  async function loadDeleted() {
    if (!ADMIN || $("#deleted").hidden) return;
    let data;
    try { data = await latest("deleted", "admin/conversations?deleted=true"); } catch (e) { return; }
    if (!data) return;
    const list = $("#deleted-list");
    list.replaceChildren(...data.conversations.map((c) =>
      el("li", {"data-deleted-conversation-id": c.id},
        el("span", {text: c.contact.name || c.contact.phone || `#${c.id}`}),
        el("span", {class: "muted", text: ` · deleted ${when(c.deleted_at)}`}),
        el("button", {type: "button", text: "Restore",
          onclick: () => act("POST", `admin/conversations/${c.id}/restore`, {}, () => { loadDeleted(); loadList(); })}))));
    if (!data.conversations.length) list.append(el("li", {class: "empty", text: "No deleted conversations."}));
  }

  drawer("#bell-btn", "#bell", loadBell);
  drawer("#tasks-btn", "#tasks", loadTasks);
  drawer("#deleted-btn", "#deleted", loadDeleted);
  $("#logout").addEventListener("click", () => act("POST", "auth/logout", {}, () => window.location.assign("/login")));

  // --- waiting for a person, drafts, errors in words, time order ---------------------------------
  function sentence(text) {
    const t = String(text).trim();
    return t.charAt(0).toUpperCase() + t.slice(1) + (/[.!?]$/.test(t) ? "" : ".");
  }

  function ago(iso) {
    const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (s < 60) return "just now";
    if (s < 3600) return `${Math.floor(s / 60)} min`;
    if (s < 86400) return `${Math.floor(s / 3600)} h`;
    return `${Math.floor(s / 86400)} d`;
  }

  function waitWords(w) {
    return `waiting for a person since ${when(w.since)} (${ago(w.since)}) · ${w.reason_text}`;
  }

  function ownerWords(c) {
    if (c.assignee_id === ME) return "you";
    if (c.assignee_id !== null) return `user ${c.assignee_id}`;
    if (c.waiting || c.needs_human) return "nobody yet (the bot is quiet: a person answers)";
    if (c.business_app_since) return "a person in the WhatsApp Business app (the bot is quiet until handed back or resolved)";
    return "unassigned (the bot answers)";
  }

  function renderWaiting(c) {
    const note = $("#thread-waiting");
    note.hidden = !c.waiting;
    note.textContent = c.waiting ? sentence(waitWords(c.waiting)) + " Take it over or answer to end the wait." : "";
    $("#thread").dataset.waiting = c.waiting ? "true" : "false";
  }

  function setWaitingView(on) {
    state.waiting = on;
    $("#waiting-view").setAttribute("aria-pressed", String(on));
    for (const o of document.querySelectorAll("[data-status]"))
      o.setAttribute("aria-pressed", String(!on && o.dataset.status === state.status));
  }
  $("#waiting-view").addEventListener("click", () => { setWaitingView(!state.waiting); state.page = 1; loadList(); });

  // An error as people read it: the API's words (reason_text, next_step) when it gave them, else
  // what the error object says ({code, message|title|details|error}), never "[object Object]".
  function errorWords(x) {
    if (x === null || x === undefined || x === "") return "";
    if (typeof x !== "object") return String(x);
    if (Array.isArray(x)) return x.length ? errorWords(x[0]) : "";
    if (x.reason_text) return sentence(x.reason_text) + (x.next_step ? " " + x.next_step : "");
    if (x.error && typeof x.error === "object") return errorWords(x.error);
    if (Array.isArray(x.errors) && x.errors.length) return errorWords(x.errors[0]);
    const said = [x.details, x.message, x.title, x.error].find((v) => typeof v === "string" && v);
    const code = x.code !== undefined && x.code !== null ? ` (code ${x.code})` : "";
    return sentence((said || "the send failed") + code);
  }

  function showSendError(err) {
    const box = $("#reply-error");
    if (!err) { box.hidden = true; box.replaceChildren(); return; }
    // an API refusal ({ok: false, code, error}) says itself what happened; a failed send, in words
    const what = typeof err.error === "string" && !err.reason_text ? sentence(err.error) : errorWords(err);
    box.replaceChildren(el("strong", {text: "Not sent: "}), el("span", {class: "what", text: what}),
      err.next_step && !err.reason_text ? el("span", {class: "next", text: " " + err.next_step}) : null);
    box.hidden = false;
  }

  // Unsent replies (queued, failed …) sit among the messages by when they were written, not below
  // everything that came after them. The messages keep their own order.
  function inTimeOrder(messages, unsent) {
    const out = [...messages];
    for (const u of unsent) {
      const at = Date.parse(u.dataset.at || "");
      const i = Number.isNaN(at) ? -1 : out.findIndex((n) => n.dataset.messageId && Date.parse(n.dataset.at) > at);
      if (i < 0) out.push(u); else out.splice(i, 0, u);
    }
    return out;
  }

  // The template picker: outside the 24-hour window, the approved templates of the conversation's
  // number (GET conversations/{id} `templates`, from the catalogue synced with Meta), one field per
  // parameter with Meta's example as its hint, a live preview of the text, Send once every field is filled.
  function renderTemplatePicker(c) {
    const pick = $("#template-pick"), chosen = pick.value;
    const restricted = c.account && c.account.restricted_until;
    const note = $("#account-restriction");
    note.hidden = !restricted;
    note.textContent = restricted ? (restricted === "forever"
      ? "Meta restricted business-initiated messages from this account: no template can be sent."
      : `Meta restricted business-initiated messages from this account until ${when(restricted)}: no template can be sent before then.`) : "";
    const templates = c.templates || [];
    pick.replaceChildren(el("option", {value: "", text: templates.length ? "Choose a template…"
      : "No approved template in the catalogue yet (an admin syncs it with Meta)"}),
      ...templates.map((t) => {
        const stopped = t.category === "MARKETING" && c.marketing_opt_out;
        return el("option", {value: `${t.name}|${t.language}`, disabled: stopped,
                             text: `${t.name} · ${t.language} · ${t.category.toLowerCase()}` +
                                   (stopped ? " (the customer stopped marketing)" : "")});
      }));
    pick.value = [...pick.options].some((o) => o.value === chosen && !o.disabled) ? chosen : "";
    if (pick.value !== chosen || !$("#template-fields").childElementCount) renderTemplateFields(pickedTemplate());
    else updateTemplatePreview();
  }

  function pickedTemplate() {
    const v = $("#template-pick").value;
    return ((state.detail || {}).templates || []).find((t) => `${t.name}|${t.language}` === v) || null;
  }

  function templateSlots(t) {  // [{part, name, label, hint, key}] in the order Meta shows them
    const p = t.parameters, slots = [];
    if (p.header && p.header.kind === "text") p.header.params.forEach((x) => slots.push({part: "header", name: x.name,
      label: `Header {{${x.name}}}`, hint: x.example}));
    else if (p.header) slots.push({part: "header", name: p.header.kind, media: true,
      label: `Header ${p.header.kind} (link)`, hint: p.header.example || "https://…"});
    p.body.forEach((x) => slots.push({part: "body", name: x.name, label: `{{${x.name}}}`, hint: x.example}));
    p.buttons.forEach((b) => slots.push({part: "button", name: String(b.index),
      label: `Button “${b.text || b.type}” ${b.type === "copy_code" ? "code" : "{{" + b.name + "}}"}`, hint: b.example}));
    return slots;
  }

  function renderTemplateFields(t) {
    const box = $("#template-fields");
    box.replaceChildren(...(t ? templateSlots(t) : []).map((s) => el("label", {class: "inline template-field"}, s.label + " ",
      el("input", {type: "text", "data-part": s.part, "data-name": s.name, placeholder: s.hint || "",
                   "aria-label": `Template parameter ${s.label}`, oninput: updateTemplatePreview}))));
    updateTemplatePreview();
    const first = box.querySelector("input");
    if (first) first.focus();
  }

  function templateValues() {
    const out = {header: {}, body: {}, button: {}};
    for (const i of $("#template-fields").querySelectorAll("input")) out[i.dataset.part][i.dataset.name] = i.value.trim();
    return out;
  }

  function templateComplete() {
    return [...$("#template-fields").querySelectorAll("input")].every((i) => i.value.trim() !== "");
  }

  function templateParameters(t) {  // the API's {header, body, buttons}: lists by position, objects by name
    const v = templateValues(), p = t.parameters, named = p.format === "named";
    const texts = (names, values) => named ? Object.fromEntries(names.map((n) => [n, values[n]])) : names.map((n) => values[n]);
    const out = {body: texts(p.body.map((x) => x.name), v.body)};
    if (p.header && p.header.kind === "text") out.header = texts(p.header.params.map((x) => x.name), v.header);
    else if (p.header) out.header = {link: v.header[p.header.kind]};
    if (p.buttons.length) out.buttons = p.buttons.map((b) => v.button[String(b.index)]);
    return out;
  }

  function fillText(text, values) {
    return (text || "").replace(/\{\{\s*([A-Za-z0-9_]+)\s*\}\}/g, (m, n) => values[n] || m);
  }

  function updateTemplatePreview() {
    const t = pickedTemplate(), box = $("#template-preview");
    const restricted = state.detail && state.detail.account && state.detail.account.restricted_until;
    $("#send-template").disabled = !t || !templateComplete() || Boolean(restricted);
    box.hidden = !t;
    if (!t) { box.replaceChildren(); return; }
    const v = templateValues(), lines = [];
    for (const c of t.components) {
      const kind = String(c.type || "").toUpperCase();
      if (kind === "HEADER") lines.push(el("strong", {text: (c.format || "TEXT") === "TEXT" ? fillText(c.text, v.header)
                                                             : `[${String(c.format).toLowerCase()}]`}));
      else if (kind === "BODY") lines.push(el("p", {text: fillText(c.text, v.body)}));
      else if (kind === "FOOTER") lines.push(el("small", {class: "muted", text: c.text}));
      else if (kind === "BUTTONS") lines.push(el("p", {class: "template-buttons", text: (c.buttons || []).map((b) => `[${b.text}]`).join(" ")}));
    }
    box.replaceChildren(...lines);
  }

  function customerLink(x) {
    if (!x.conversation_id) return null;
    const c = x.contact || {};
    return el("a", {href: `#conversation-${x.conversation_id}`, class: "customer",
                    text: c.name || c.phone || `conversation ${x.conversation_id}`,
                    onclick: (ev) => { ev.preventDefault(); openConversation(x.conversation_id, true); }});
  }

  // Drafts: one per conversation and signed-in person, in this browser's storage; the reply box
  // only ever shows the open conversation's.
  const DRAFTS = `wacrm:draft:${ME}:`;
  function drafts() {
    try { return window.localStorage; } catch (e) { return null; }  // storage can be switched off
  }
  function saveDraft() {
    const store = drafts();
    if (state.open === null || !store) return;
    const text = $("#reply textarea").value;
    try {
      if (text.trim()) store.setItem(DRAFTS + state.open, text); else store.removeItem(DRAFTS + state.open);
    } catch (e) { /* full or refused: the draft lives in the box only */ }
  }
  function clearDraft(id) {
    const store = drafts();
    if (store) try { store.removeItem(DRAFTS + id); } catch (e) { /* nothing kept */ }
  }
  function switchDraft(id) {
    saveDraft();
    const store = drafts();
    $("#reply textarea").value = id === null || !store ? "" : (store.getItem(DRAFTS + id) || "");
    pendingKey = null;  // a key belongs to one conversation's reply
    attach(null);  // so does a file
    showSendError(null);
  }

  // --- live: one EventSource; each event names what to refetch ----------------------------------
  let pending = {list: false, thread: false, bell: false, tasks: false}, timer = null;
  function schedule(what) {
    Object.assign(pending, what);
    if (timer) return;
    timer = setTimeout(() => {  // a burst of events is one refetch
      const p = pending; pending = {list: false, thread: false, bell: false, tasks: false}; timer = null;
      if (p.list) loadList();
      if (p.thread) loadThread();
      if (p.bell) loadBell();
      if (p.tasks) loadTasks();
    }, 150);
  }

  function onEvent(ev) {
    let data = {};
    try { data = JSON.parse(ev.data); } catch (e) { /* ids only; a bad one refetches all */ }
    const here = state.open !== null && (data.conversation_id === undefined || data.conversation_id === state.open);
    if (ev.type === "notification") schedule({bell: true, tasks: true});
    else schedule({list: true, thread: here});
  }

  let wasLive = false;
  function connect() {
    const source = new EventSource("/api/v1/events");  // the browser resends Last-Event-ID itself
    for (const kind of ["message", "status", "conversation", "notification"]) source.addEventListener(kind, onEvent);
    source.addEventListener("ready", () => {
      document.body.dataset.live = "true";
      if (wasLive) schedule({list: true, thread: true, bell: true, tasks: true});  // back after a gap
      wasLive = true;
    });
    source.addEventListener("error", () => { document.body.dataset.live = "false"; });
  }

  loadList();
  loadBell();
  loadTasks();
  connect();
})();
