// Stratus dashboard: a single-page application over the public API (/api/v1).
//
// Signs in with an API token (kept in this tab's session storage, sent as a bearer token).
// Every view renders its static parts once and its data parts in refresh(); the live stream
// (GET /api/v1/events, read with fetch so the token stays in a header) makes the current view
// refresh when something it shows changed. Data is only ever put into the page as text nodes,
// never as HTML.
"use strict";

const API = "/api/v1";
const PAGE = 50;
let token = sessionStorage.getItem("stratus-token");
let current = null; // the current view: { refresh(), kinds: [...] }
let refreshTimer = null;
let streamAbort = null;

// ---- DOM helpers -------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const $ = (sel) => document.querySelector(sel);

function badge(state) {
  return h("span", { class: `badge s-${state}` }, state || "?");
}

function toast(text) {
  const t = $("#toast");
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.hidden = true), 4000);
}

function when(ts) {
  return ts ? new Date(ts).toLocaleString() : "";
}

function secs(a, b) {
  if (!a || !b) return "";
  return ((new Date(b) - new Date(a)) / 1000).toFixed(2) + " s";
}

function tags(list) {
  return h("span", { class: "tags" }, (list || []).map((t) => h("span", {}, t)));
}

function errorBox(e) {
  return h("div", { class: "error", role: "alert" }, e.message || String(e));
}

function confirmAction(text) {
  const d = $("#confirm");
  $("#confirm-text").textContent = text;
  return new Promise((resolve) => {
    d.addEventListener("close", () => resolve(d.returnValue === "ok"), { once: true });
    d.showModal();
    $("#confirm-ok").focus();
  });
}

// ---- API ---------------------------------------------------------------------------------

class ApiError extends Error {}

async function api(path, opts = {}) {
  const headers = { Authorization: `Bearer ${token}` };
  if (opts.body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(API + path, {
    method: opts.method || "GET",
    headers,
    body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
  });
  if (r.status === 401) {
    signOut("Your session ended; sign in again.");
    throw new ApiError("not signed in");
  }
  const text = await r.text();
  const data = text ? JSON.parse(text) : null;
  if (!r.ok) throw new ApiError((data && data.error && data.error.message) || `HTTP ${r.status}`);
  return data;
}

function q(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") u.set(k, v);
  const s = u.toString();
  return s ? "?" + s : "";
}

const enc = encodeURIComponent;

// ---- Live updates ------------------------------------------------------------------------

async function stream() {
  if (streamAbort) streamAbort.abort();
  const ctl = new AbortController();
  streamAbort = ctl;
  const dot = $("#live");
  while (token && !ctl.signal.aborted) {
    try {
      const r = await fetch(API + "/events", { headers: { Authorization: `Bearer ${token}` }, signal: ctl.signal });
      if (!r.ok) throw new Error(`events: HTTP ${r.status}`);
      dot.classList.add("on");
      dot.title = "Live updates: connected";
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const ev = /^event: (.*)$/m.exec(block);
          const data = /^data: (.*)$/m.exec(block);
          if (!ev) continue;
          if (ev[1] === "lagged") scheduleRefresh();
          else if (ev[1] === "change" && data) {
            const c = JSON.parse(data[1]);
            if (current && (!current.kinds || current.kinds.includes(c.kind))) scheduleRefresh();
          }
        }
      }
    } catch (e) {
      if (ctl.signal.aborted) return;
    }
    dot.classList.remove("on");
    dot.title = "Live updates: reconnecting";
    await new Promise((res) => setTimeout(res, 2000));
  }
}

function scheduleRefresh() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(async () => {
    refreshTimer = null;
    if (current && current.refresh) {
      try {
        await current.refresh();
      } catch (e) {
        /* shown by the view on its next explicit refresh */
      }
    }
  }, 200);
}

// ---- Sign-in -----------------------------------------------------------------------------

function signOut(message) {
  token = null;
  sessionStorage.removeItem("stratus-token");
  if (streamAbort) streamAbort.abort();
  $("#nav").hidden = true;
  $("#who").textContent = "";
  location.hash = "#/login";
  if (message) toast(message);
}

function loginView() {
  const input = h("input", { id: "token", type: "password", autocomplete: "current-password", required: true, "aria-describedby": "token-help" });
  const err = h("div", { "aria-live": "assertive" });
  const form = h(
    "form",
    {
      class: "login",
      onsubmit: async (e) => {
        e.preventDefault();
        token = input.value.trim();
        try {
          const me = await api("/whoami");
          sessionStorage.setItem("stratus-token", token);
          toast(`Signed in as ${me.user.name}`);
          location.hash = "#/";
          start();
        } catch (x) {
          token = null;
          err.replaceChildren(errorBox(new Error("That token was refused. Check it and try again.")));
        }
      },
    },
    h("h1", {}, "Sign in to Stratus"),
    h("label", { for: "token" }, "API token", input),
    h(
      "p",
      { id: "token-help", class: "muted" },
      "The first admin's token is in DATA_DIR/admin.token; create more with `stratus token create`.",
    ),
    err,
    h("button", { class: "primary", type: "submit" }, "Sign in"),
  );
  return { el: form, focus: input };
}

// ---- Views -------------------------------------------------------------------------------

function deploymentsView() {
  const body = h("div");
  const view = {
    kinds: ["deployment", "server"],
    el: h("section", {}, h("h1", {}, "Deployments"), body),
    async refresh() {
      const deps = await api("/deployments" + q({ limit: 1000 }));
      const rows = [];
      for (const d of deps.items) {
        const s = await api("/servers" + q({ deployment: d.name, limit: 1000 }));
        const counts = {};
        for (const x of s.items) counts[x.state] = (counts[x.state] || 0) + 1;
        rows.push(
          h(
            "tr",
            {},
            h("td", {}, h("a", { href: `#/deployments/${enc(d.name)}` }, d.name)),
            h("td", {}, d.cloud || ""),
            h("td", {}, Object.entries(counts).map(([k, n]) => h("span", {}, badge(k), ` ${n} `))),
            h("td", { class: "muted" }, d.description || ""),
          ),
        );
      }
      body.replaceChildren(
        rows.length
          ? h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Cloud"), h("th", {}, "Servers"), h("th", {}, "Description"))), h("tbody", {}, rows))
          : h("p", {}, "No deployments yet. Apply a deployment file: stratus apply -f examples/lb-and-app.toml"),
      );
    },
  };
  return view;
}

let me = null; // the signed-in user's name: managed SSH logs in as their own account

function sshCommand(s) {
  const ip = s.public_ip || s.private_ip;
  return ip && me ? `ssh ${me}@${ip}` : "";
}

function copyButton(text, label) {
  return h(
    "button",
    {
      class: "copy",
      type: "button",
      "aria-label": label,
      onclick: async () => {
        try {
          await navigator.clipboard.writeText(text);
          toast("Copied");
        } catch (e) {
          toast(text);
        }
      },
    },
    "Copy",
  );
}

function deploymentView(name) {
  const table = h("div");
  const arrays = h("div");
  const pager = h("div", { class: "pager" });
  const cursors = [null];
  let page = 0;
  const launchName = h("input", { id: "launch-name", required: true, pattern: "[a-z0-9][a-z0-9-]*" });
  const launchTemplate = h("select", { id: "launch-template", required: true });
  const launchForm = h(
    "form",
    {
      class: "inline",
      "aria-label": "Launch a server",
      onsubmit: async (e) => {
        e.preventDefault();
        try {
          await api("/servers", { method: "POST", body: { name: launchName.value, deployment: name, template: launchTemplate.value } });
          toast(`Launching ${name}/${launchName.value}`);
          launchName.value = "";
          await view.refresh();
        } catch (x) {
          toast(x.message);
        }
      },
    },
    h("label", { for: "launch-name" }, "New server name", launchName),
    h("label", { for: "launch-template" }, "Template", launchTemplate),
    h("button", { class: "primary", type: "submit" }, "Launch"),
  );
  const view = {
    kinds: ["server", "array", "deployment"],
    el: h(
      "section",
      {},
      h("h1", {}, `Deployment ${name}`),
      h("h2", {}, "Servers"),
      table,
      pager,
      launchForm,
      arrays,
    ),
    async init() {
      const ts = await api("/templates" + q({ limit: 1000 }));
      launchTemplate.replaceChildren(...ts.items.map((t) => h("option", { value: t.name }, t.name)));
    },
    async refresh() {
      const s = await api("/servers" + q({ deployment: name, limit: PAGE, after: cursors[page] }));
      const rows = s.items.map((x) => {
        const key = `${x.deployment}/${x.name}`;
        const ssh = sshCommand(x);
        return h(
          "tr",
          {},
          h("td", {}, h("a", { href: `#/servers/${enc(key)}` }, x.name)),
          h("td", {}, badge(x.state)),
          h("td", {}, x.cloud),
          h("td", {}, x.size),
          h("td", { class: "mono" }, x.private_ip || ""),
          h("td", { class: "mono" }, x.public_ip || ""),
          h("td", {}, tags(x.tags)),
          h("td", { class: "mono" }, ssh, ssh ? copyButton(ssh, `Copy the SSH command for ${x.name}`) : null),
        );
      });
      table.replaceChildren(
        h(
          "table",
          { "aria-label": `Servers of ${name}` },
          h("thead", {}, h("tr", {}, ["Name", "State", "Cloud", "Size", "Private IP", "Public IP", "Tags", "SSH"].map((c) => h("th", { scope: "col" }, c)))),
          h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 8 }, "No servers."))),
        ),
      );
      if (s.next) cursors[page + 1] = s.next;
      pager.replaceChildren(
        h("button", { type: "button", disabled: page === 0, onclick: () => { page -= 1; view.refresh(); } }, "Previous"),
        h("span", {}, `Page ${page + 1}`),
        h("button", { type: "button", disabled: !s.next, onclick: () => { page += 1; view.refresh(); } }, "Next"),
      );
      const a = await api("/arrays" + q({ deployment: name, limit: 1000 }));
      arrays.replaceChildren(
        a.items.length ? h("h2", {}, "Arrays") : "",
        ...a.items.map((arr) => {
          const n = h("input", { type: "number", min: arr.min, max: arr.max, value: arr.desired, id: `scale-${arr.name}` });
          return h(
            "form",
            {
              class: "inline",
              "aria-label": `Scale array ${arr.name}`,
              onsubmit: async (e) => {
                e.preventDefault();
                if (!(await confirmAction(`Scale array ${arr.name} to ${n.value} servers?`))) return;
                try {
                  await api(`/arrays/${enc(name)}/${enc(arr.name)}/scale`, { method: "POST", body: { desired: Number(n.value) } });
                  toast(`Scaling ${arr.name} to ${n.value}`);
                } catch (x) {
                  toast(x.message);
                }
              },
            },
            h("strong", {}, arr.name),
            h("span", { class: "muted" }, `${arr.min}–${arr.max}, template ${arr.template}`),
            h("label", { for: `scale-${arr.name}` }, "Desired", n),
            h("button", { type: "submit" }, "Scale"),
          );
        }),
      );
    },
  };
  return view;
}

// A bar of `px` pixels (set through the style property: the page's CSP forbids style attributes).
function bar(px) {
  const b = h("span", { class: "bar" });
  b.style.width = `${px}px`;
  return b;
}

function bootTimeline(runs) {
  const boot = runs.filter((r) => r.phase === "boot").sort((a, b) => (a.id < b.id ? -1 : 1));
  if (!boot.length) return h("p", { class: "muted" }, "No boot runs yet.");
  const t0 = boot.map((r) => r.started_at || r.created_at).filter(Boolean).sort()[0];
  const total = Math.max(0.001, ...boot.map((r) => (r.finished_at ? (new Date(r.finished_at) - new Date(t0)) / 1000 : 0)));
  return h(
    "table",
    { "aria-label": "Boot timeline" },
    h("thead", {}, h("tr", {}, ["Script", "Start", "Duration", "", "Status", "Exit"].map((c) => h("th", { scope: "col" }, c)))),
    h(
      "tbody",
      {},
      boot.map((r) => {
        const dur = r.started_at && r.finished_at ? (new Date(r.finished_at) - new Date(r.started_at)) / 1000 : null;
        const off = r.started_at ? (new Date(r.started_at) - new Date(t0)) / 1000 : null;
        return h(
          "tr",
          {},
          h("td", {}, h("a", { href: `#/runs/${enc(r.id)}` }, r.script)),
          h("td", { class: "mono" }, off === null ? "" : `+${off.toFixed(2)} s`),
          h("td", { class: "mono" }, dur === null ? "" : `${dur.toFixed(2)} s`),
          h("td", { "aria-hidden": "true" }, dur === null ? "" : bar(Math.round((dur / total) * 200))),
          h("td", {}, badge(r.status)),
          h("td", { class: "mono" }, r.exit_code ?? ""),
        );
      }),
    ),
  );
}

function runsTable(runs, withServer) {
  return h(
    "table",
    { "aria-label": "Runs" },
    h("thead", {}, h("tr", {}, [withServer ? "Server" : null, "Script", "Phase", "Status", "Exit", "Started", "Duration", "By"].filter(Boolean).map((c) => h("th", { scope: "col" }, c)))),
    h(
      "tbody",
      {},
      runs.length
        ? runs.map((r) =>
            h(
              "tr",
              {},
              withServer ? h("td", {}, h("a", { href: `#/servers/${enc(r.deployment + "/" + r.server_name)}` }, `${r.deployment}/${r.server_name}`)) : null,
              h("td", {}, h("a", { href: `#/runs/${enc(r.id)}` }, r.script)),
              h("td", {}, r.phase),
              h("td", {}, badge(r.status)),
              h("td", { class: "mono" }, r.exit_code ?? ""),
              h("td", {}, when(r.started_at)),
              h("td", { class: "mono" }, secs(r.started_at, r.finished_at)),
              h("td", {}, r.requested_by),
            ),
          )
        : h("tr", {}, h("td", { colspan: 8 }, "No runs.")),
    ),
  );
}

function serverView(key) {
  const details = h("div");
  const timeline = h("div");
  const runsBox = h("div");
  const live = h("div");
  const actions = h("div");
  let template = null;
  let watching = null; // the run whose output is shown live
  const view = {
    kinds: ["server", "run"],
    el: h("section", {}, h("h1", {}, `Server ${key}`), details, actions, h("h2", {}, "Boot timeline"), timeline, h("h2", {}, "Live output"), live, h("h2", {}, "Runs"), runsBox),
    async refresh() {
      const s = await api(`/servers/${enc(key)}`);
      const ssh = sshCommand(s);
      details.replaceChildren(
        h(
          "dl",
          { class: "kv" },
          [
          ["State", badge(s.state)],
          ["Template", `${s.template} (version ${s.template_version})`],
          ["Cloud", `${s.cloud} / ${s.region}`],
          ["Size", s.size],
          ["Image", `${s.image} v${s.image_version}`],
          ["Private IP", h("span", { class: "mono" }, s.private_ip || "")],
          ["Public IP", h("span", { class: "mono" }, s.public_ip || "")],
          ["SSH", h("span", { class: "mono" }, ssh, ssh ? copyButton(ssh, "Copy the SSH command") : null)],
          ["Tags", tags(s.tags)],
          ["Launched", when(s.launched_at)],
          ["Operational since", when(s.operational_at)],
          s.stranded ? ["Stranded", h("span", {}, s.stranded.message, h("pre", { class: "output" }, s.stranded.output_tail || ""))] : null,
        ]
          .filter(Boolean)
          .flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]),
        ),
      );
      const runs = (await api("/runs" + q({ server: key, limit: 200 }))).items;
      timeline.replaceChildren(bootTimeline(runs));
      runsBox.replaceChildren(runsTable(runs, false));
      const running = runs.find((r) => r.status === "running") || (watching && runs.find((r) => r.id === watching));
      if (running) {
        watching = running.id;
        const r = await api(`/runs/${enc(running.id)}`);
        const pre = h("pre", { class: "output", "aria-label": `Output of ${r.script}`, tabindex: 0 }, r.output || "");
        live.replaceChildren(h("p", {}, `${r.script}: `, badge(r.status)), pre);
        pre.scrollTop = pre.scrollHeight;
      } else {
        live.replaceChildren(h("p", { class: "muted" }, "Nothing is running."));
      }
      if (!template || template.name !== s.template) {
        template = await api(`/templates/${enc(s.template)}`);
        await renderActions(s);
      }
    },
  };
  async function renderActions(s) {
    const scripts = template.operational_scripts || [];
    const select = h("select", { id: "run-script" }, scripts.map((n) => h("option", { value: n }, n)));
    const inputsBox = h("div", { class: "inline-inputs" });
    const showInputs = async () => {
      inputsBox.replaceChildren();
      if (!select.value) return;
      const sc = await api(`/scripts/${enc(select.value)}`);
      for (const d of sc.inputs || []) {
        if (d.kind === "cred") continue;
        const id = `input-${d.name}`;
        inputsBox.append(h("label", { for: id }, d.name, h("input", { id, "data-input": d.name, placeholder: d.default ?? "" })));
      }
    };
    select.addEventListener("change", showInputs);
    const runForm = h(
      "form",
      {
        class: "inline",
        "aria-label": "Run an operational script",
        onsubmit: async (e) => {
          e.preventDefault();
          const inputs = {};
          for (const i of inputsBox.querySelectorAll("input[data-input]")) if (i.value) inputs[i.dataset.input] = i.value;
          try {
            const r = await api("/runs", { method: "POST", body: { script: select.value, server: key, inputs } });
            watching = r.id;
            toast(`Started ${select.value}`);
            await view.refresh();
          } catch (x) {
            toast(x.message);
          }
        },
      },
      h("label", { for: "run-script" }, "Operational script", select),
      inputsBox,
      h("button", { class: "primary", type: "submit", disabled: scripts.length === 0 }, "Run"),
    );
    const terminate = h(
      "button",
      {
        class: "danger",
        type: "button",
        disabled: ["terminated", "decommissioning"].includes(s.state),
        onclick: async () => {
          if (!(await confirmAction(`Terminate ${key}? Its decommission scripts run, then its instance is destroyed.`))) return;
          try {
            await api(`/servers/${enc(key)}`, { method: "DELETE" });
            toast(`Terminating ${key}`);
            await view.refresh();
          } catch (x) {
            toast(x.message);
          }
        },
      },
      "Terminate",
    );
    actions.replaceChildren(runForm, h("p", {}, terminate));
    await showInputs();
  }
  return view;
}

function runView(id) {
  const box = h("div");
  const view = {
    kinds: ["run"],
    el: h("section", {}, h("h1", {}, "Run"), box),
    async refresh() {
      const r = await api(`/runs/${enc(id)}`);
      const pre = h("pre", { class: "output", tabindex: 0, "aria-label": "Output" }, r.output || "");
      box.replaceChildren(
        h(
          "dl",
          { class: "kv" },
          [
            ["Script", r.script],
            ["Server", h("a", { href: `#/servers/${enc(r.deployment + "/" + r.server_name)}` }, `${r.deployment}/${r.server_name}`)],
            ["Phase", r.phase],
            ["Status", badge(r.status)],
            ["Exit code", r.exit_code ?? ""],
            ["Inputs", Object.entries(r.inputs || {}).map(([k, v]) => `${k}=${v}`).join(", ")],
            ["Requested by", r.requested_by],
            ["Started", when(r.started_at)],
            ["Duration", secs(r.started_at, r.finished_at)],
          ].flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]),
        ),
        pre,
      );
      pre.scrollTop = pre.scrollHeight;
    },
  };
  return view;
}

function runsView() {
  const status = h("select", { id: "f-status" }, ["", "queued", "running", "succeeded", "failed", "cancelled", "timed_out"].map((s) => h("option", { value: s }, s || "any")));
  const server = h("input", { id: "f-server", placeholder: "deployment/name" });
  const box = h("div");
  const view = {
    kinds: ["run"],
    el: h(
      "section",
      {},
      h("h1", {}, "Runs"),
      h(
        "form",
        { class: "inline", "aria-label": "Filter runs", onsubmit: (e) => { e.preventDefault(); view.refresh(); } },
        h("label", { for: "f-status" }, "Status", status),
        h("label", { for: "f-server" }, "Server", server),
        h("button", { type: "submit" }, "Filter"),
      ),
      box,
    ),
    async refresh() {
      try {
        const r = await api("/runs" + q({ status: status.value, server: server.value, limit: 100 }));
        box.replaceChildren(runsTable(r.items, true));
      } catch (x) {
        box.replaceChildren(errorBox(x));
      }
    },
  };
  return view;
}

function auditView() {
  const actor = h("input", { id: "f-actor" });
  const action = h("input", { id: "f-action", placeholder: "server." });
  const box = h("div");
  const view = {
    kinds: ["server", "run", "deployment", "array", "rollout"],
    el: h(
      "section",
      {},
      h("h1", {}, "Audit log"),
      h(
        "form",
        { class: "inline", "aria-label": "Filter the audit log", onsubmit: (e) => { e.preventDefault(); view.refresh(); } },
        h("label", { for: "f-actor" }, "Actor", actor),
        h("label", { for: "f-action" }, "Action starts with", action),
        h("button", { type: "submit" }, "Filter"),
      ),
      box,
    ),
    async refresh() {
      try {
        const entries = await api("/audit" + q({ actor: actor.value, action: action.value, limit: 200 }));
        box.replaceChildren(
          h(
            "table",
            { "aria-label": "Audit entries" },
            h("thead", {}, h("tr", {}, ["When", "Actor", "Action", "Target"].map((c) => h("th", { scope: "col" }, c)))),
            h("tbody", {}, entries.map((e) => h("tr", {}, h("td", {}, when(e.at)), h("td", {}, e.actor), h("td", { class: "mono" }, e.action), h("td", { class: "mono" }, e.target)))),
          ),
        );
      } catch (x) {
        box.replaceChildren(errorBox(x));
      }
    },
  };
  return view;
}

function credentialsView() {
  const box = h("div");
  return {
    kinds: [],
    el: h("section", {}, h("h1", {}, "Credentials"), h("p", { class: "muted" }, "Values are never shown; scripts get them as cred: inputs."), box),
    async refresh() {
      const c = await api("/credentials" + q({ limit: 1000 }));
      box.replaceChildren(
        h(
          "table",
          { "aria-label": "Credentials" },
          h("thead", {}, h("tr", {}, ["Name", "Value", "Description", "Updated"].map((x) => h("th", { scope: "col" }, x)))),
          h("tbody", {}, c.items.map((x) => h("tr", {}, h("td", {}, x.name), h("td", { class: "mono" }, "••••••••"), h("td", {}, x.description || ""), h("td", {}, when(x.updated_at))))),
        ),
      );
    },
  };
}

// ---- Router ------------------------------------------------------------------------------

async function route() {
  const main = $("#main");
  const path = decodeURIComponent(location.hash.replace(/^#/, "")) || "/";
  if (!token && path !== "/login") {
    location.hash = "#/login";
    return;
  }
  let view;
  if (path === "/login") {
    const v = loginView();
    current = null;
    main.replaceChildren(v.el);
    v.focus.focus();
    return;
  }
  let m;
  if ((m = /^\/deployments\/(.+)$/.exec(path))) view = deploymentView(m[1]);
  else if ((m = /^\/servers\/(.+)$/.exec(path))) view = serverView(m[1]);
  else if ((m = /^\/runs\/(.+)$/.exec(path))) view = runView(m[1]);
  else if (path === "/runs") view = runsView();
  else if (path === "/audit") view = auditView();
  else if (path === "/credentials") view = credentialsView();
  else view = deploymentsView();
  current = view;
  main.replaceChildren(view.el);
  try {
    if (view.init) await view.init();
    await view.refresh();
  } catch (e) {
    if (!(e instanceof ApiError && e.message === "not signed in")) main.append(errorBox(e));
  }
  const heading = main.querySelector("h1");
  if (heading) {
    heading.tabIndex = -1;
    heading.focus();
  }
}

async function start() {
  if (!token) return route();
  try {
    const who = await api("/whoami");
    me = who.user.name;
    $("#who").textContent = `${me}`;
    $("#who").append(" ", h("button", { type: "button", onclick: () => signOut("Signed out.") }, "Sign out"));
    $("#nav").hidden = false;
  } catch (e) {
    return;
  }
  stream();
  route();
}

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", start);
