// cb-world: guard
// Test-only guard `js-hog` (JavaScript): allocates memory without bound
// (8 MiB byte arrays, written and kept), to prove the memory limit stops a JS
// guest. Never use outside tests. (Array#fill on plain arrays is interpreted
// and slow: that variant hits a 200 ms deadline before 64 MiB.)
export function evaluate(ctx) {
  const hoard = [];
  for (let i = 0; ; i++) {
    hoard.push(new Uint8Array(1 << 23).fill(i));
  }
}
