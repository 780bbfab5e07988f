// Validate KEDA objects (JSON array on stdin) against KEDA's CRD schemas, as packaged by
// @kubernetes-models/keda. Prints a JSON array of {index, kind, name, error}; empty when valid.
// Usage: node keda_validate.mjs <dir holding node_modules/@kubernetes-models/keda>
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const KINDS = ["ScaledObject", "ScaledJob", "TriggerAuthentication", "ClusterTriggerAuthentication"];
const root = join(process.argv[2], "node_modules", "@kubernetes-models", "keda", "keda.sh", "v1alpha1");
const models = {};
for (const kind of KINDS) {
  models[kind] = (await import(pathToFileURL(join(root, `${kind}.js`)).href))[kind];
}

const objects = JSON.parse(readFileSync(0, "utf8"));
const problems = [];
objects.forEach((object, index) => {
  const name = object?.metadata?.name ?? "?";
  const Model = models[object?.kind];
  if (object?.apiVersion !== "keda.sh/v1alpha1" || !Model) {
    problems.push({ index, kind: object?.kind, name, error: `not a KEDA keda.sh/v1alpha1 kind: ${object?.apiVersion} ${object?.kind}` });
    return;
  }
  try {
    new Model(object).validate();
  } catch (error) {
    problems.push({ index, kind: object.kind, name, error: String(error.message ?? error) });
  }
});
process.stdout.write(JSON.stringify(problems));
