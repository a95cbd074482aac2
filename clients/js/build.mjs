// Bundles src/ into dist/index.js (ES module) and checks the size budget: at most 10 KB
// minified and gzipped.
import { build } from "esbuild";
import { gzipSync } from "node:zlib";

const BUDGET = 10 * 1024;
const common = { entryPoints: ["src/index.ts"], bundle: true, format: "esm", target: "es2020" };

await build({ ...common, outfile: "dist/index.js", sourcemap: true });
const min = await build({ ...common, minify: true, write: false });
const bytes = min.outputFiles[0].contents;
const gz = gzipSync(bytes, { level: 9 }).length;
console.log(`size: ${bytes.length} B minified, ${gz} B minified+gzipped (budget ${BUDGET} B)`);
if (gz > BUDGET) {
  console.error("over the size budget");
  process.exit(1);
}
