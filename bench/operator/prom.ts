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

/** The smallest bucket bound `le` holding at least quantile `q` of the observations. */
export function histogramQuantile(text: string, name: string, want: Labels, q: number): number {
  const buckets = series(text, `${name}_bucket`)
    .filter((s) => matches(s.labels, want))
    .map((s) => ({
      le: s.labels.le === "+Inf" ? Number.POSITIVE_INFINITY : Number(s.labels.le),
      count: s.value,
    }))
    .sort((a, b) => a.le - b.le);
  const total = buckets[buckets.length - 1]?.count ?? 0;
  return buckets.find((b) => b.count >= q * total)?.le ?? Number.NaN;
}
