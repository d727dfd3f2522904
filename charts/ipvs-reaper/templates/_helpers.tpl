{{- define "ipvs-reaper.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ipvs-reaper.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ipvs-reaper.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "ipvs-reaper.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "ipvs-reaper.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ipvs-reaper.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ipvs-reaper.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ipvs-reaper.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ipvs-reaper.configMapName" -}}
{{- default (include "ipvs-reaper.fullname" .) .Values.existingConfigMap }}
{{- end }}

{{- define "ipvs-reaper.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
"true" when the host's IPv4 sysctls are mounted writable (the agent writes expire_nodest_conn among them):
with `auto`, whenever this is not a dry run, whatever the config's expireNodestConn says, so that a live edit of
the ConfigMap to `enforce` (or an existingConfigMap that says it) finds the mount there.
*/}}
{{- define "ipvs-reaper.sysctlWritable" -}}
{{- $mode := .Values.sysctlMount | toString }}
{{- if eq $mode "true" }}true
{{- else if and (eq $mode "auto") (not .Values.dryRun) }}true
{{- end }}
{{- end }}

{{/*
What a JSON Schema cannot say and the agent refuses: a rule whose maxWaitSeconds ends before its
graceSeconds. For `policy`, the rule as the agent merges it with its defaults; for a namespace, the override
itself. Keep in step with ipvs_reaper/config.py (DEFAULT_POLICY); tests/chart/test_schema.py checks that
helm and the agent accept and reject the same documents.
*/}}
{{- define "ipvs-reaper.checkConfig" -}}
{{- $config := .Values.config | default dict }}
{{- $defaults := dict "gone" (list 0 300) "terminating" (list 0 300) "notReady" (list 30 nil) }}
{{- $policy := get $config "policy" | default dict }}
{{- range $state, $default := $defaults }}
{{- $rule := get $policy $state | default dict }}
{{- $grace := ternary (get $rule "graceSeconds") (index $default 0) (hasKey $rule "graceSeconds") }}
{{- $wait := ternary (get $rule "maxWaitSeconds") (index $default 1) (hasKey $rule "maxWaitSeconds") }}
{{- if and (not (kindIs "invalid" $wait)) (lt (float64 $wait) (float64 $grace)) }}
{{- fail (printf "config.policy.%s.maxWaitSeconds: must not be less than graceSeconds (%v < %v)" $state $wait $grace) }}
{{- end }}
{{- end }}
{{- range $namespace, $override := (get $config "namespaces" | default dict) }}
{{- range $state, $rule := ($override | default dict) }}
{{- $rule = $rule | default dict }}
{{- $grace := ternary (get $rule "graceSeconds") nil (hasKey $rule "graceSeconds") }}
{{- $wait := ternary (get $rule "maxWaitSeconds") nil (hasKey $rule "maxWaitSeconds") }}
{{- if and (not (kindIs "invalid" $wait)) (not (kindIs "invalid" $grace)) (lt (float64 $wait) (float64 $grace)) }}
{{- fail (printf "config.namespaces.%s.%s.maxWaitSeconds: must not be less than graceSeconds (%v < %v)" $namespace $state $wait $grace) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
rules/ipvs-reaper.rules.yaml, the one source of the alerts (also loadable into Prometheus as it is), with
values applied: an alert switched off is left out; `for`, `severity` and `threshold` (the number its
expression ends with) replace the file's, in the description too ("for <duration>", "above|at least
<number>"); runbook URLs move to alerts.runbookBaseUrl. The file's job="ipvs-reaper" becomes the job the
monitors set (the chart's name label), and its DaemonSet "ipvs-reaper" this release's, in its namespace.
*/}}
{{- define "ipvs-reaper.rules" -}}
{{- $file := .Files.Get "rules/ipvs-reaper.rules.yaml" | fromYaml }}
{{- $settings := .Values.alerts.rules | default dict }}
{{- $base := .Values.alerts.runbookBaseUrl }}
{{- $job := printf "job=%q" (include "ipvs-reaper.name" .) }}
{{- $daemonset := printf "namespace=%q,daemonset=%q" .Release.Namespace (include "ipvs-reaper.fullname" .) }}
{{- $groups := list }}
{{- range $group := $file.groups }}
{{- $rules := list }}
{{- range $rule := $group.rules }}
{{- $set := get $settings $rule.alert | default dict }}
{{- if ne (toString (get $set "enabled")) "false" }}
{{- $rule = deepCopy $rule }}
{{- $expr := $rule.expr | replace "job=\"ipvs-reaper\"" $job | replace "daemonset=\"ipvs-reaper\"" $daemonset }}
{{- $_ := set $rule "expr" $expr }}
{{- $description := $rule.annotations.description }}
{{- if hasKey $set "for" }}
{{- $description = $description | replace (printf "for %s" $rule.for) (printf "for %s" (get $set "for")) }}
{{- $_ := set $rule "for" (get $set "for") }}
{{- end }}
{{- if hasKey $set "severity" }}{{ $_ := set $rule.labels "severity" (get $set "severity") }}{{ end }}
{{- if hasKey $set "threshold" }}
{{- $old := regexFind "[-+0-9.e]+\\s*$" (trimSuffix "\n" $rule.expr) | trim }}
{{- $_ := set $rule "expr" (regexReplaceAll "([<>=!]=?)\\s*[-+0-9.e]+\\s*$" (trimSuffix "\n" $rule.expr) (printf "${1} %v" (get $set "threshold"))) }}
{{- $description = regexReplaceAll (printf "(above|at least) %s\\b" (regexQuoteMeta $old)) $description (printf "${1} %v" (get $set "threshold")) }}
{{- end }}
{{- $_ := set $rule.annotations "description" $description }}
{{- $_ := set $rule.annotations "runbook_url" (printf "%s#%s" $base (lower $rule.alert)) }}
{{- $rules = append $rules $rule }}
{{- end }}
{{- end }}
{{- $groups = append $groups (dict "name" $group.name "rules" $rules) }}
{{- end }}
{{- toYaml (dict "groups" $groups) }}
{{- end }}

{{/*
A Prometheus duration the schema allows ("1m30s", "500ms") in seconds: for the checks a schema cannot make.
*/}}
{{- define "ipvs-reaper.seconds" -}}
{{- $total := 0.0 }}
{{- range $part := regexFindAll "[0-9]+(ms|s|m|h)" . -1 }}
{{- $n := float64 (regexFind "^[0-9]+" $part) }}
{{- $unit := regexFind "(ms|s|m|h)$" $part }}
{{- $scale := get (dict "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0) $unit }}
{{- $total = addf $total (mulf $n $scale) }}
{{- end }}
{{- $total }}
{{- end }}

{{/*
A monitor whose scrapeTimeout exceeds its interval is refused by Prometheus at load time, silently for helm.
*/}}
{{- define "ipvs-reaper.checkScrape" -}}
{{- $monitor := index .Values.metrics .name }}
{{- if gt (float64 (include "ipvs-reaper.seconds" $monitor.scrapeTimeout)) (float64 (include "ipvs-reaper.seconds" $monitor.interval)) }}
{{- fail (printf "metrics.%s.scrapeTimeout: must not exceed its interval (%s > %s)" .name $monitor.scrapeTimeout $monitor.interval) }}
{{- end }}
{{- end }}

{{/*
The name kube-rbac-proxy's certificate is for, and the ServiceMonitor verifies (the metrics Service's DNS name;
scrapes go to each pod's address, so the name is checked, not the address).
*/}}
{{- define "ipvs-reaper.metricsServerName" -}}
{{- printf "%s-metrics.%s.svc" (include "ipvs-reaper.fullname" .) .Release.Namespace }}
{{- end }}
