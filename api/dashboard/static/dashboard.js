// metalic dashboard: fetch the page's data, draw its charts, and poll for changes.
// Polling sends the last ETag (the server answers 304 when nothing changed) and, on the task page,
// the id of the last loss point it has (the server sends only newer points). Charts are redrawn
// with Plotly.react and a fixed uirevision, so a zoom or pan survives every update.
(function () {
  "use strict";
  const body = document.body;
  const base = body.dataset.base || "";
  const pollMs = Number(body.dataset.pollMs || 2000);
  const main = document.querySelector("main");
  const page = main && main.dataset.page;
  const live = document.getElementById("live");
  const config = { responsive: true, displaylogo: false };
  const palette = ["#1f6feb", "#d1495b", "#2a9d8f", "#e9a23b", "#7b61ff", "#6c757d", "#00a6d6", "#8f5f3f"];
  // One colour per task state on every chart (and in the badges' CSS): failed is the only red.
  const stateColors = { queued: "#e9a23b", running: "#1f6feb", succeeded: "#2a9d8f", failed: "#c0392b", cancelled: "#6c757d" };

  // An axis of counts (rounds, trainings): whole-number ticks only.
  function countAxis(title, max, extra) {
    const axis = { title: { text: title }, tickformat: "d", rangemode: "tozero" };
    if (max <= 10) axis.dtick = 1;
    return Object.assign(axis, extra || {});
  }

  function get(obj, path) {
    return path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), obj);
  }

  function format(value, how, digits) {
    if (value === null || value === undefined) return "";
    if (typeof value === "number") {
      if (how === "exp") return value.toExponential(3);
      if (how === "fixed") return value.toFixed(digits === undefined ? 3 : Number(digits));
      if (digits !== undefined) return value.toFixed(Number(digits));
    }
    return String(value);
  }

  // A null value shows the element's placeholder (data-empty, as the server rendered it), never "".
  // Elements with data-when are shown only while that field has a value, data-unless only while not.
  function setFields(payload) {
    document.querySelectorAll("[data-field]").forEach((el) => {
      const value = get(payload, el.dataset.field);
      if (value === undefined) return;
      const text = value === null ? el.dataset.empty || "" : format(value, el.dataset.format, el.dataset.digits);
      if (el.textContent !== text) el.textContent = text;
      if (el.dataset.class) el.className = el.dataset.class + " " + text;
    });
    document.querySelectorAll("[data-when], [data-unless]").forEach((el) => {
      const value = get(payload, el.dataset.when || el.dataset.unless);
      if (value === undefined) return;
      const has = value !== null && value !== "";
      el.hidden = el.dataset.when ? !has : has;
    });
  }

  function setTables(payload) {
    document.querySelectorAll("table[data-rows]").forEach((table) => {
      const rows = get(payload, table.dataset.rows);
      if (!Array.isArray(rows)) return;
      const heads = Array.from(table.querySelectorAll("thead th"));
      const tbody = table.querySelector("tbody");
      const fresh = document.createElement("tbody");
      rows.forEach((row) => {
        const tr = document.createElement("tr");
        heads.forEach((th) => {
          const td = document.createElement("td");
          let value = row[th.dataset.key];
          if (th.dataset.flag) {
            if (value === false) tr.className = th.dataset.flag;
            value = value ? "yes" : th.dataset.flag;
          }
          const text = value === null || value === undefined ? "" : String(value);
          if (th.dataset.href) {
            const a = document.createElement("a");
            a.href = base + th.dataset.href.replace(/\{(\w+)\}/g, (_, k) => encodeURIComponent(row[k]));
            a.textContent = text;
            td.appendChild(a);
          } else {
            td.textContent = text;
          }
          tr.appendChild(td);
        });
        fresh.appendChild(tr);
      });
      if (!rows.length) {
        const tr = document.createElement("tr");
        tr.className = "empty";
        const td = document.createElement("td");
        td.colSpan = heads.length;
        td.textContent = "none";
        tr.appendChild(td);
        fresh.appendChild(tr);
      }
      if (fresh.innerHTML !== tbody.innerHTML) table.replaceChild(fresh, tbody);
    });
  }

  // Tick labels may overflow nothing (the margins are set): Plotly's default ("hide past div") measures
  // every label's box after each draw, a forced page layout per axis (28 ms of the study page's load).
  // A template sets it on every x and y axis a chart has.
  const template = { layout: { xaxis: { ticklabeloverflow: "allow" }, yaxis: { ticklabeloverflow: "allow" } } };

  function layout(id, extra) {
    return Object.assign(
      {
        uirevision: id,
        margin: { l: 60, r: 20, t: 10, b: 50 },
        height: 320,
        legend: { orientation: "h", y: -0.25 },
        font: { family: "system-ui, sans-serif", size: 12 },
        paper_bgcolor: "rgba(0,0,0,0)",
        plot_bgcolor: "#fafbfc",
        template: template,
      },
      extra || {}
    );
  }

  // Charts marked data-lazy (the study's analysis views, below the fold) are drawn when they come
  // within 300 px of the viewport: a new Plotly figure costs 20-60 ms (parallel coordinates, WebGL,
  // several hundred), and the charts in view should not wait for them. Updates while still off
  // screen replace the pending figure. The observer says whether a chart is near the viewport
  // (asking its position here would force a page layout between the charts in view).
  const pending = new Map();
  const watcher =
    "IntersectionObserver" in window
      ? new IntersectionObserver(
          (entries) =>
            entries.forEach((e) => {
              if (!e.isIntersecting || !pending.has(e.target.id)) return;
              const [traces, extra] = pending.get(e.target.id);
              pending.delete(e.target.id);
              watcher.unobserve(e.target);
              draw(e.target.id, traces, extra, true);
            }),
          { rootMargin: "300px" }
        )
      : null;

  function draw(id, traces, extra, inView) {
    const el = document.getElementById(id);
    if (!el) return;
    if (watcher && !inView && el.dataset.lazy !== undefined && el.classList.contains("loading")) {
      if (!pending.has(id)) watcher.observe(el);
      pending.set(id, [traces, extra]);
      return;
    }
    Plotly.react(el, traces, layout(id, extra), config);
    el.classList.remove("loading");
    el.dataset.points = String(traces.reduce((n, t) => n + (t.x ? t.x.length : 0) + (t.z ? t.z.length : 0) + (t.dimensions ? t.dimensions[0].values.length : 0), 0));
  }

  function empty(id, message) {
    const el = document.getElementById(id);
    if (!el) return;
    if (pending.delete(id) && watcher) watcher.unobserve(el);
    el.classList.remove("loading");
    el.classList.add("nodata");
    el.textContent = message;
  }

  // ---- CSV of what a chart shows -------------------------------------------------------------------
  function chartCsv(el) {
    const lines = [["trace", "x", "y", "z", "text"].join(",")];
    const q = (v) => {
      const s = v === null || v === undefined ? "" : String(v);
      return /[",\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
    };
    (el.data || []).forEach((t) => {
      const name = t.name || t.type || "trace";
      if (t.z) {
        t.z.forEach((row, i) =>
          row.forEach((v, j) => lines.push([q(name), q(t.x ? t.x[j] : j), q(t.y ? t.y[i] : i), q(v), q(t.text ? t.text[i][j] : "")].join(",")))
        );
      } else {
        const n = (t.x || t.y || []).length;
        for (let i = 0; i < n; i++) lines.push([q(name), q(t.x ? t.x[i] : i), q(t.y ? t.y[i] : ""), "", q(t.text && t.text[i])].join(","));
      }
    });
    return lines.join("\n") + "\n";
  }

  function tableCsv(table) {
    const q = (s) => (/[",\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s);
    return (
      Array.from(table.querySelectorAll("tr:not(.empty)"))
        .map((tr) => Array.from(tr.children).map((cell) => q(cell.textContent.trim())).join(","))
        .join("\n") + "\n"
    );
  }

  function download(name, text) {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
    a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  }

  document.addEventListener("click", (event) => {
    const chart = event.target.closest("button[data-csv-for]");
    if (chart) download(chart.dataset.csvFor.replace(/-chart$/, "") + ".csv", chartCsv(document.getElementById(chart.dataset.csvFor)));
    const table = event.target.closest("button[data-csv-table]");
    if (table) download(table.dataset.csvTable.replace(/-table$/, "") + ".csv", tableCsv(document.getElementById(table.dataset.csvTable)));
  });

  // ---- pages ---------------------------------------------------------------------------------------
  const pages = {};

  pages.overview = function (d) {
    const states = Object.keys(d.queue);
    const counts = states.map((s) => d.queue[s]);
    draw("queue-chart", [{ type: "bar", name: "tasks", x: states, y: counts, marker: { color: states.map((s) => stateColors[s]) } }], {
      yaxis: countAxis("tasks", Math.max(0, ...counts)),
    });
    const t = d.throughput;
    const kinds = ["succeeded", "failed", "cancelled"];
    const most = Math.max(0, ...t.hours.map((_, i) => kinds.reduce((n, k) => n + t[k][i], 0)));
    draw(
      "throughput-chart",
      kinds.map((k) => ({ type: "bar", name: k, x: t.hours, y: t[k], marker: { color: stateColors[k] } })),
      { barmode: "stack", yaxis: countAxis("trainings", most) }
    );
    const T = d.timeline;
    if (T.start.length) {
      const families = Array.from(new Set(T.family));
      draw(
        "timeline-chart",
        families.map((f, i) => {
          const idx = T.family.map((g, j) => (g === f ? j : -1)).filter((j) => j >= 0);
          return {
            type: "bar", orientation: "h", name: f, y: idx.map((j) => T.worker[j]), x: idx.map((j) => T.ms[j]), base: idx.map((j) => T.start[j]),
            text: idx.map((j) => T.runs[j] + " runs, " + T.state[j]), hovertemplate: "%{text}<br>%{base|%H:%M:%S}, %{x} ms<extra>" + f + "</extra>",
            marker: { color: palette[i % palette.length] },
          };
        }),
        { barmode: "overlay", xaxis: { type: "date", title: { text: "time (UTC)" } }, yaxis: { title: { text: "trainer" }, automargin: true, type: "category" } }
      );
    } else empty("timeline-chart", "no batch has run yet");
  };

  // Each phase counts its own iterations (a marching training's Adam and L-BFGS shares alternate,
  // slab by slab, each phase counting on from its previous share). A point of another phase than
  // the one before starts a segment drawn after everything drawn so far, so L-BFGS follows Adam
  // (and a marching run's shares follow each other) instead of overlaying it. A phase's segments
  // are one trace, split by a gap.
  const task = { cursor: 0, phases: {}, end: 0, last: null };
  pages.task = function (d) {
    task.cursor = d.cursor;
    const p = d.points;
    for (let i = 0; i < p.id.length; i++) {
      const ph = p.phase[i];
      const s = task.phases[ph] || (task.phases[ph] = { x: [], y: [], offset: 0, seen: 0 });
      if (task.last !== null && task.last !== ph) {
        s.offset = task.end - s.seen;
        if (s.x.length) {
          s.x.push(null);
          s.y.push(null);
        }
      }
      task.last = ph;
      const x = s.offset + p.iteration[i];
      s.x.push(x);
      s.y.push(p.loss[i]);
      s.seen = p.iteration[i];
      task.end = Math.max(task.end, x);
    }
    const names = Object.keys(task.phases);
    if (names.length) {
      draw(
        "loss-chart",
        names.map((ph, i) => ({ type: "scatter", mode: "lines", name: ph, x: task.phases[ph].x, y: task.phases[ph].y, line: { color: palette[i] } })),
        { xaxis: { title: { text: names.length > 1 ? "iteration (" + names.join(", then ") + ")" : "iteration" }, tickformat: "d" }, yaxis: { title: { text: "loss" }, type: "log" } }
      );
    } else if (["succeeded", "failed", "cancelled"].includes(d.task.state)) {
      empty("loss-chart", "no loss was recorded for this task");
    }
    const T = d.over_time;
    const overTime = document.getElementById("over-time");
    if (T && T.t.length && overTime.hidden) {
      overTime.hidden = false;
      draw(
        "time-chart",
        [{ type: "scatter", mode: "lines", name: "e(t)", x: T.t, y: T.error, line: { color: palette[0] }, hovertemplate: "t = %{x}<br>e = %{y:.3e}<extra></extra>" }],
        { xaxis: { title: { text: "t" } }, yaxis: { title: { text: "error at t (of the reference's RMS)" }, type: "log", exponentformat: "power" }, showlegend: false }
      );
      const C = d.causal;
      if (C) {
        document.getElementById("causal-note").textContent =
          "· causal training: eps " + C.eps + " (stage " + C.stage + " of " + C.stages + "), smallest weight " + C.min_weight.toFixed(3) +
          (C.finished_at ? ", finished at Adam iteration " + C.finished_at : ", not finished");
      }
    }
    const figure = document.getElementById("solution");
    const img = document.getElementById("solution-img");
    if (d.task.state === "succeeded" && figure.hidden) {
      img.src = img.dataset.src;
      figure.hidden = false;
    }
    const cancel = document.getElementById("cancel-form");
    if (cancel && !["queued", "running"].includes(d.task.state)) cancel.remove();
  };

  function band(x, low, high, color, name) {
    return [
      { type: "scatter", mode: "lines", x: x, y: high, line: { width: 0 }, hoverinfo: "skip", showlegend: false, legendgroup: name, name: name + " (97.5%)" },
      { type: "scatter", mode: "lines", x: x, y: low, fill: "tonexty", fillcolor: color + "22", line: { width: 0 }, hoverinfo: "skip", showlegend: false, legendgroup: name, name: name + " (2.5%)" },
    ];
  }

  // A short name for an arm in a legend (its full name is in the hover and the legend's tooltip).
  function short(name) {
    return name.length > 22 ? name.slice(0, 20) + "…" : name;
  }

  // Observed trainings over the posterior. O: the study's analysis (its latest observations); the
  // arms in `known` get a trace (and colour) each, the others one grey trace; x and y name the
  // parameters of the axes (no y: the error is on the y axis).
  // Only the latest OBSERVED_OVER_POSTERIOR are drawn there (the analysis views show them all):
  // thousands of SVG markers would slow the chart the page opens with.
  const OBSERVED_OVER_POSTERIOR = 300;
  function observedTraces(O, known, colorOf, xName, yName) {
    const group = (a) => (known.includes(a) ? a : "other arms");
    const from = Math.max(0, O.arm.length - OBSERVED_OVER_POSTERIOR);
    const groups = Array.from(new Set(O.arm.slice(from).map(group)));
    return groups.map((g) => {
      const idx = O.arm.map((a, i) => (i >= from && group(a) === g ? i : -1)).filter((i) => i >= 0);
      return {
        type: "scatter",
        mode: "markers",
        name: "observed: " + short(g),
        legendgroup: g,
        x: idx.map((i) => O.params[xName][i]),
        y: idx.map((i) => (yName ? O.params[yName][i] : O.error[i])),
        text: idx.map((i) => O.arm[i] + ", rel. L2 " + O.error[i].toExponential(2)),
        hovertemplate: "%{text}<extra>observed</extra>",
        marker: { color: g === "other arms" ? "#8a94a6" : colorOf(g), size: 8, symbol: "circle-open", line: { width: 2 } },
      };
    });
  }

  pages.study = function (d) {
    const L = d.landscape;
    d.analysis.arm = d.analysis.arm_code.map((c) => d.analysis.arms[c]);
    if (!L) {
      empty("landscape-chart", "no policy snapshot yet (at least two observations and a refit)");
      empty("best-chart", "no policy snapshot yet");
    } else if (L.kind === "lines") {
      const traces = [];
      const colorOf = (arm) => (L.arms.indexOf(arm) >= 0 ? palette[L.arms.indexOf(arm) % palette.length] : "#8a94a6");
      L.arms.forEach((arm, i) => {
        const c = palette[i % palette.length];
        traces.push(...band(L.x, L.error_low[i], L.error_high[i], c, arm));
        traces.push({ type: "scatter", mode: "lines", name: short(arm), legendgroup: arm, x: L.x, y: L.error[i], hovertemplate: arm + ": %{y:.2e}<extra></extra>", line: { color: c, width: 2 } });
      });
      traces.push(...observedTraces(d.analysis, L.arms, colorOf, L.x_name, null));
      // the legend sits to the right in one column: five long arm names no longer squeeze the plot
      draw("landscape-chart", traces, {
        xaxis: { title: { text: L.x_name } },
        yaxis: { title: { text: "predicted rel. L2" }, type: "log" },
        legend: { orientation: "v", x: 1.02, y: 1, xanchor: "left", font: { size: 11 } },
        margin: { l: 60, r: 10, t: 10, b: 50 },
        height: 360,
      });
      draw(
        "best-chart",
        [{ type: "scatter", mode: "markers", name: "recommended arm", x: L.x, y: L.best, text: L.best_error.map((e) => "predicted error " + e.toExponential(2)), marker: { color: palette[0], size: 7 } }],
        // the left margin from the longest arm name (automargin would cost Plotly a second layout pass)
        { xaxis: { title: { text: L.x_name } }, yaxis: { type: "category" }, margin: { l: 12 + 7 * Math.max(...L.best.map((b) => b.length)), r: 20, t: 10, b: 50 } }
      );
    } else {
      const [zmin, zmax] = L.log10_error_range;
      const heat = { type: "heatmap", name: "log10 predicted error of the recommended arm", x: L.x, y: L.y, z: L.log10_best_error, zmin: zmin, zmax: zmax, colorscale: "Viridis" };
      heat.colorbar = { title: { text: "log10 err" }, x: 1.0 };
      const colorOf = (arm) => palette[Math.max(L.best_arms.indexOf(arm), 0) % palette.length];
      const seen = observedTraces(d.analysis, [], () => "#ffffff", L.x_name, L.y_name).map((t) => Object.assign(t, { showlegend: false }));
      draw("landscape-chart", [heat, ...seen], { xaxis: { title: { text: L.x_name } }, yaxis: { title: { text: L.y_name } } });
      // recommended arms: one colour each (a discrete scale) and a legend naming them
      const n = L.best_arms.length;
      const scale = [];
      L.best_arms.forEach((arm, i) => {
        scale.push([i / n, colorOf(arm)], [(i + 1) / n, colorOf(arm)]);
      });
      const keys = L.best_arms.map((arm) => ({ type: "scatter", mode: "markers", name: short(arm), x: [null], y: [null], marker: { color: colorOf(arm), size: 12, symbol: "square" }, hoverinfo: "skip" }));
      draw(
        "best-chart",
        [{ type: "heatmap", name: "recommended arm", x: L.x, y: L.y, z: L.best_code, text: L.best, hovertemplate: "%{text}<extra></extra>", colorscale: scale, zmin: -0.5, zmax: n - 0.5, showscale: false }, ...keys],
        { xaxis: { title: { text: L.x_name } }, yaxis: { title: { text: L.y_name } }, legend: { orientation: "v", x: 1.02, y: 1, xanchor: "left", title: { text: "recommended" } }, margin: { l: 60, r: 10, t: 10, b: 50 } }
      );
      document.getElementById("landscape-title").firstChild.textContent =
        "Predicted rel. L2 error of the recommended arm (log10, colours over the observed range; " + n + " arms recommended somewhere) ";
    }
    const T = d.terms;
    const termTraces = [];
    if (T.adam) termTraces.push({ type: "bar", name: "Adam phase (n=" + T.adam_n + ")", x: T.terms, y: T.adam, marker: { color: palette[0] } });
    if (T.lbfgs) termTraces.push({ type: "bar", name: "L-BFGS phase (n=" + T.lbfgs_n + ")", x: T.terms, y: T.lbfgs, marker: { color: palette[1] } });
    if (termTraces.length) draw("terms-chart", termTraces, { yaxis: { title: { text: "fraction of trainings" }, range: [0, 1] }, barmode: "group" });
    else empty("terms-chart", "no observation yet");
    const R = d.rewards;
    if (R.round.length) {
      draw(
        "rewards-chart",
        [
          ...band(R.round, R.reward_min, R.reward_max, palette[0], "reward range"),
          { type: "scatter", mode: "lines+markers", name: R.bucket > 1 ? "mean reward per " + R.bucket + " ids" : "reward", x: R.round, y: R.reward, line: { color: palette[0] } },
          { type: "scatter", mode: "lines", name: "accumulated error", x: R.round, y: R.accumulated_error, yaxis: "y2", line: { color: palette[1] } },
        ],
        {
          xaxis: countAxis("observation", R.round[R.round.length - 1]),
          yaxis: { title: { text: "reward (-log10 error)" } },
          // the right axis: its own ticks (not synced to the left grid, which gave values like 0.376),
          // from zero, 3 significant digits, no second grid
          yaxis2: { title: { text: "accumulated error" }, overlaying: "y", side: "right", rangemode: "tozero", tickmode: "auto", tickformat: ".3~g", showgrid: false, nticks: 6 },
          margin: { l: 60, r: 60, t: 10, b: 50 },
        }
      );
    } else empty("rewards-chart", "no observation yet");
    if (d.campaign_charts) accumulated("campaign-chart", d.campaign_charts);
    analysis(d.analysis, d.importance, d.study.observations);
  };

  // ---- a study's analysis views (its latest observations) ---------------------------------------------
  function analysis(A, I, total) {
    if (!A.count) {
      ["history-chart", "slices-chart", "parcoords-chart"].forEach((id) => empty(id, "no observation yet"));
    } else {
      const first = total - A.count + 1; // the views show the latest observations
      const x = A.error.map((_, i) => first + i);
      draw(
        "history-chart",
        [
          { type: "scatter", mode: "markers", name: "rel. L2", x: x, y: A.error, text: A.arm, hovertemplate: "%{text}: %{y:.2e}<extra></extra>", marker: { color: palette[0], size: 5, opacity: 0.6 } },
          { type: "scatter", mode: "lines", name: "best so far", x: x, y: A.best, line: { color: palette[2], width: 2, shape: "hv" } },
          { type: "scatter", mode: "lines", name: "running median", x: x, y: A.median, line: { color: palette[1], width: 2 } },
        ],
        { xaxis: countAxis("observation", total), yaxis: { title: { text: "rel. L2 error" }, type: "log" } }
      );
      // arms by how often they were chosen: the eight most frequent get colours, the rest one grey
      const counts = {};
      A.arm.forEach((a) => (counts[a] = (counts[a] || 0) + 1));
      const top = Object.keys(counts).sort((a, b) => counts[b] - counts[a]).slice(0, 8);
      const group = (a) => (top.includes(a) ? a : "other arms");
      const groups = [...top, ...(A.arm.some((a) => !top.includes(a)) ? ["other arms"] : [])];
      const colorOf = (g) => (g === "other arms" ? "#b8c0cc" : palette[top.indexOf(g) % palette.length]);
      const names = Object.keys(A.params);
      const traces = [];
      const layoutExtra = { grid: { rows: 1, columns: names.length, pattern: "coupled" }, yaxis: { title: { text: "rel. L2 error" }, type: "log" } };
      names.forEach((name, k) => {
        const axis = k === 0 ? "" : String(k + 1);
        layoutExtra["xaxis" + axis] = { title: { text: name } };
        groups.forEach((g) => {
          const idx = A.arm.map((a, i) => (group(a) === g ? i : -1)).filter((i) => i >= 0);
          traces.push({
            type: "scatter", mode: "markers", name: short(g), legendgroup: g, showlegend: k === 0, xaxis: "x" + axis, yaxis: "y",
            x: idx.map((i) => A.params[name][i]), y: idx.map((i) => A.error[i]), text: idx.map((i) => A.arm[i]),
            hovertemplate: "%{text}<br>" + name + " = %{x:.4g}: %{y:.2e}<extra></extra>", marker: { color: colorOf(g), size: 6, opacity: 0.75 },
          });
        });
      });
      draw("slices-chart", traces, layoutExtra);
      const code = A.arm.map((a) => groups.indexOf(group(a)));
      const logError = A.error.map((e) => Math.log10(e));
      draw(
        "parcoords-chart",
        [{
          type: "parcoords",
          line: { color: logError, colorscale: "Viridis", showscale: true, colorbar: { title: { text: "log10 err" } } },
          dimensions: [
            ...names.map((name) => ({ label: name, values: A.params[name] })),
            { label: "arm", values: code, tickvals: groups.map((_, i) => i), ticktext: groups.map(short) },
            { label: "log10 rel. L2", values: logError },
          ],
        }],
        { margin: { l: 60, r: 60, t: 40, b: 30 } }
      );
    }
    if (I) {
      draw(
        "importance-chart",
        [{ type: "bar", name: "importance", x: I.names, y: I.importance, marker: { color: palette[4] } }],
        { yaxis: { title: { text: "share of 1 / length-scale" }, range: [0, 1] } }
      );
    } else empty("importance-chart", "no fitted surrogate yet");
  }

  function accumulated(id, C) {
    const traces = C.heuristics.map((h, i) => ({ type: "scatter", mode: "lines", name: h, x: C.accumulated[h].round, y: C.accumulated[h].error, line: { color: palette[i % palette.length] } }));
    const last = Math.max(0, ...traces.map((t) => (t.x.length ? t.x[t.x.length - 1] : 0)));
    if (traces.some((t) => t.x.length)) draw(id, traces, { xaxis: countAxis("round", last), yaxis: { title: { text: "accumulated rel. L2 error" } } });
    else empty(id, "no finished round yet");
  }

  pages.campaign = function (d) {
    const C = d.charts;
    accumulated("accumulated-chart", C);
    const rewards = C.heuristics.map((h, i) => ({ type: "scatter", mode: "markers", name: h, x: C.reward[h].round, y: C.reward[h].reward, marker: { color: palette[i % palette.length], size: 6 } }));
    const last = Math.max(0, ...rewards.map((t) => (t.x.length ? t.x[t.x.length - 1] : 0)));
    if (rewards.some((t) => t.x.length)) draw("reward-chart", rewards, { xaxis: countAxis("round", last), yaxis: { title: { text: "reward (-log10 error)" } } });
    else empty("reward-chart", "no finished round yet");
    const tests = C.heuristics.filter((h) => C.test[h].length).map((h, i) => ({ type: "box", name: h, y: C.test[h], x: C.test[h].map(() => h), boxpoints: "all", marker: { color: palette[i % palette.length] } }));
    if (tests.length) draw("test-chart", tests, { yaxis: { title: { text: "rel. L2 error" }, type: "log" }, showlegend: false });
    else empty("test-chart", "the test rounds come last");
    const terms = Object.keys(C.terms).map((h, i) => ({ type: "bar", name: h, x: C.term_names, y: C.terms[h], marker: { color: palette[i % palette.length] } }));
    if (terms.length) draw("terms-chart", terms, { barmode: "group", yaxis: { title: { text: "fraction of online rounds" }, range: [0, 1] } });
    else empty("terms-chart", "no online round yet");
  };

  // ---- polling -------------------------------------------------------------------------------------
  let etag = null;
  let busy = false;

  function url() {
    const src = main.dataset.src;
    if (page !== "task") return src;
    return src + (src.includes("?") ? "&" : "?") + "since=" + task.cursor;
  }

  async function refresh() {
    if (busy) return;
    busy = true;
    try {
      const headers = page === "task" || !etag ? {} : { "If-None-Match": etag };
      const response = await fetch(url(), { headers: headers, credentials: "same-origin" });
      if (response.status === 401) {
        window.location.href = base + "/login?next=" + encodeURIComponent(window.location.pathname.slice(base.length) + window.location.search);
        return;
      }
      if (response.status === 304) {
        live.textContent = "up to date " + new Date().toLocaleTimeString();
        return;
      }
      if (!response.ok) {
        live.textContent = "could not update (" + response.status + ")";
        live.classList.add("bad");
        return;
      }
      etag = response.headers.get("ETag");
      const payload = await response.json();
      setFields(payload);
      setTables(payload);
      pages[page](payload);
      live.textContent = "updated " + new Date().toLocaleTimeString();
      live.classList.remove("bad");
    } catch (err) {
      live.textContent = "offline, retrying";
      live.classList.add("bad");
    } finally {
      busy = false;
    }
  }

  if (page && pages[page]) {
    refresh();
    setInterval(() => {
      if (!document.hidden) refresh();
    }, pollMs);
  } else if (live) {
    live.textContent = "";
  }
})();
