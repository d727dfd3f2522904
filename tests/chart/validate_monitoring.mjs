// Validates prometheus-operator objects (a JSON list on stdin) against the operator's CRD schemas, as
// packaged by @kubernetes-models/prometheus-operator. Run from the directory it is installed in.
import { readFileSync } from "node:fs";
import { PodMonitor, PrometheusRule, ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const kinds = { ServiceMonitor, PodMonitor, PrometheusRule };
let failed = 0;
for (const doc of JSON.parse(readFileSync(0, "utf8"))) {
  try {
    new kinds[doc.kind](doc).validate();
    console.log(`valid ${doc.kind} ${doc.metadata.name}`);
  } catch (error) {
    failed += 1;
    console.log(`invalid ${doc.kind} ${doc.metadata.name}: ${error.message}`);
  }
}
process.exit(failed ? 1 : 0);
