// Just enough of the Prometheus text format for the benchmark: sums of a counter's series and a
// quantile from a histogram's cumulative buckets (the upper bound of the bucket it falls in).

type Labels = Record<string, string>;

function series(text: string, name: string): { labels: Labels; value: number }[] {
  const out: { labels: Labels; value: number }[] = [];
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const m = /^[^{ ]+(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels: Labels = {};
    for (const l of (m[1] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1] ?? ""] = l[2] ?? "";
    out.push({ labels, value: Number(m[2]) });
  }
  return out;
}

const matches = (labels: Labels, want: Labels) => Object.entries(want).every(([k, v]) => labels[k] === v);

export function sumSeries(text: string, name: string, want: Labels): number {
  return series(text, name)
    .filter((s) => matches(s.labels, want))
    .reduce((a, s) => a + s.value, 0);
}

/** A histogram's cumulative buckets over every series matching `want`, summed by bound. */
function buckets(text: string, name: string, want: Labels): { le: number; count: number }[] {
  const byLe = new Map<number, number>();
  for (const s of series(text, `${name}_bucket`)) {
    if (!matches(s.labels, want)) continue;
    const le = s.labels.le === "+Inf" ? Number.POSITIVE_INFINITY : Number(s.labels.le);
    byLe.set(le, (byLe.get(le) ?? 0) + s.value);
  }
  return [...byLe].map(([le, count]) => ({ le, count })).sort((a, b) => a.le - b.le);
}

/** The smallest bucket bound `le` holding at least quantile `q` of the observations. */
export function histogramQuantile(text: string, name: string, want: Labels, q: number): number {
  const all = buckets(text, name, want);
  const total = all[all.length - 1]?.count ?? 0;
  return all.find((b) => b.count >= q * total)?.le ?? Number.NaN;
}

/** The share of observations above bucket bound `le` (which must be one of the buckets). */
export function shareAbove(text: string, name: string, want: Labels, le: number): number {
  const all = buckets(text, name, want);
  const total = all[all.length - 1]?.count ?? 0;
  const below = all.find((b) => b.le === le)?.count ?? Number.NaN;
  return total ? (total - below) / total : Number.NaN;
}

/** A histogram's observation count over every series matching `want`. */
export function histogramCount(text: string, name: string, want: Labels): number {
  return sumSeries(text, `${name}_count`, want);
}
