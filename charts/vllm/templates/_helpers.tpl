{{/* vllm.name: the chart name, or nameOverride, cut to 63 characters. */}}
{{- define "vllm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* vllm.fullname: the name of every object; the release name when it already contains the chart name. */}}
{{- define "vllm.fullname" -}}
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

{{/* vllm.chart: chart name and version for the helm.sh/chart label. */}}
{{- define "vllm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* vllm.servedModelName: the model name the API serves, model.name when unset. */}}
{{- define "vllm.servedModelName" -}}
{{- default .Values.model.name .Values.model.servedModelName }}
{{- end }}

{{/* vllm.modelLabel: servedModelName made a valid label value (other characters become "-", 63 max, alphanumeric ends). */}}
{{- define "vllm.modelLabel" -}}
{{- $v := regexReplaceAll "[^A-Za-z0-9._-]" (include "vllm.servedModelName" .) "-" | trunc 63 }}
{{- $v = regexReplaceAll "^[^A-Za-z0-9]+" $v "" }}
{{- regexReplaceAll "[^A-Za-z0-9]+$" $v "" }}
{{- end }}

{{/* vllm.selectorLabels: the immutable labels that tie the Deployment, Service and monitors to the pods (a root with .instance: a canary with its own Service). */}}
{{- define "vllm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vllm.name" . }}
app.kubernetes.io/instance: {{ if hasKey . "instance" }}{{ .instance }}{{ else }}{{ .Release.Name }}{{ end }}
{{- end }}

{{/* vllm.labels: the standard labels plus engine and model, on every object. */}}
{{- define "vllm.labels" -}}
helm.sh/chart: {{ include "vllm.chart" . }}
{{ include "vllm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: inference-server
app.kubernetes.io/part-of: kubeinfer
kubeinfer.io/release: {{ .Release.Name | quote }}
kubeinfer.io/engine: {{ .Values.engine }}
kubeinfer.io/model: {{ include "vllm.modelLabel" . | quote }}
{{- end }}

{{/* vllm.image: the image reference of the selected engine. */}}
{{- define "vllm.image" -}}
{{- $img := index .Values.image .Values.engine }}
{{- printf "%s:%s" $img.repository $img.tag }}
{{- end }}

{{/* vllm.tensorParallelSize: vllm.tensorParallelSize, or gpusPerReplica when 0; fails when above gpusPerReplica. */}}
{{- define "vllm.tensorParallelSize" -}}
{{- $gpus := int .Values.gpusPerReplica }}
{{- $tp := int .Values.vllm.tensorParallelSize }}
{{- if eq $tp 0 }}{{ $tp = $gpus }}{{ end }}
{{- if gt $tp $gpus }}
{{- fail (printf "vllm.tensorParallelSize (%d) cannot exceed gpusPerReplica (%d)" $tp $gpus) }}
{{- end }}
{{- $tp }}
{{- end }}

{{/* vllm.startupFailureThreshold: ceil(probes.startup.budgetSeconds / probes.startup.periodSeconds). */}}
{{- define "vllm.startupFailureThreshold" -}}
{{- $budget := int .Values.probes.startup.budgetSeconds }}
{{- $period := int .Values.probes.startup.periodSeconds }}
{{- div (add $budget (sub $period 1)) $period }}
{{- end }}

{{/* vllm.cacheClaimName: the PVC mounted as model cache (existing or created). */}}
{{- define "vllm.cacheClaimName" -}}
{{- default (printf "%s-model-cache" (include "vllm.fullname" .)) .Values.modelCache.pvc.existingClaim }}
{{- end }}

{{/* vllm.args: the server argv built from typed values, one flag and one value per item. */}}
{{- define "vllm.args" -}}
{{- $served := include "vllm.servedModelName" . }}
{{- $args := list }}
{{- if eq .Values.engine "sim" }}
{{- $s := .Values.sim }}
{{- $args = list "--model" .Values.model.name "--served-model-name" $served "--port" (toString (int .Values.service.port)) "--mode" $s.mode }}
{{- if $s.maxNumSeqs }}{{ $args = concat $args (list "--max-num-seqs" (toString (int $s.maxNumSeqs))) }}{{ end }}
{{- if $s.maxModelLen }}{{ $args = concat $args (list "--max-model-len" (toString (int $s.maxModelLen))) }}{{ end }}
{{- if $s.timeToFirstToken }}{{ $args = concat $args (list "--time-to-first-token" $s.timeToFirstToken) }}{{ end }}
{{- if $s.interTokenLatency }}{{ $args = concat $args (list "--inter-token-latency" $s.interTokenLatency) }}{{ end }}
{{- if $s.fakeMetrics }}{{ $args = concat $args (list "--fake-metrics" $s.fakeMetrics) }}{{ end }}
{{- if $s.forceDummyTokenizer }}{{ $args = append $args "--force-dummy-tokenizer" }}{{ end }}
{{- else }}
{{- $v := .Values.vllm }}
{{- $args = list .Values.model.name }}
{{- if .Values.model.revision }}{{ $args = concat $args (list "--revision" .Values.model.revision) }}{{ end }}
{{- $args = concat $args (list "--served-model-name" $served "--port" (toString (int .Values.service.port)) "--tensor-parallel-size" (include "vllm.tensorParallelSize" .) "--dtype" $v.dtype "--gpu-memory-utilization" (toString $v.gpuMemoryUtilization)) }}
{{- if $v.maxModelLen }}{{ $args = concat $args (list "--max-model-len" (toString (int $v.maxModelLen))) }}{{ end }}
{{- if $v.maxNumSeqs }}{{ $args = concat $args (list "--max-num-seqs" (toString (int $v.maxNumSeqs))) }}{{ end }}
{{- $args = append $args (ternary "--enable-prefix-caching" "--no-enable-prefix-caching" $v.enablePrefixCaching) }}
{{- $args = concat $args $v.extraArgs }}
{{- end }}
{{- toYaml $args }}
{{- end }}

{{/* vllm.testSelectorLabels: the labels of the helm test pod, distinct from vllm.selectorLabels so no ReplicaSet adopts it. */}}
{{- define "vllm.testSelectorLabels" -}}
app.kubernetes.io/name: {{ include "vllm.name" . }}-test
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* vllm.runAsUser: the UID the server runs as, from securityContext, else podSecurityContext, else the image's (0 for vllm, 65532 for sim). */}}
{{- define "vllm.runAsUser" -}}
{{- $uid := ternary 65532 0 (eq .Values.engine "sim") }}
{{- if hasKey .Values.podSecurityContext "runAsUser" }}{{ $uid = .Values.podSecurityContext.runAsUser }}{{ end }}
{{- if hasKey .Values.securityContext "runAsUser" }}{{ $uid = .Values.securityContext.runAsUser }}{{ end }}
{{- int $uid }}
{{- end }}

{{/* vllm.podSecurityContext: the engine's default pod securityContext; each key of podSecurityContext replaces the default's. */}}
{{- define "vllm.podSecurityContext" -}}
{{- $ctx := dict "seccompProfile" (dict "type" "RuntimeDefault") }}
{{- if eq .Values.engine "sim" }}
{{- /* llm-d-inference-sim v0.10.2 is built on distroless/static:nonroot with USER 65532:65532. */}}
{{- $ctx = merge $ctx (dict "runAsNonRoot" true "runAsUser" 65532 "runAsGroup" 65532 "fsGroup" 65532 "fsGroupChangePolicy" "OnRootMismatch") }}
{{- end }}
{{- range $k, $v := .Values.podSecurityContext }}{{ $_ := set $ctx $k $v }}{{ end }}
{{- toYaml $ctx }}
{{- end }}

{{/* vllm.securityContext: the server container's default securityContext; each key of securityContext replaces the default's. */}}
{{- define "vllm.securityContext" -}}
{{- $ctx := dict "allowPrivilegeEscalation" false "privileged" false "readOnlyRootFilesystem" true "capabilities" (dict "drop" (list "ALL")) }}
{{- range $k, $v := .Values.securityContext }}{{ $_ := set $ctx $k $v }}{{ end }}
{{- toYaml $ctx }}
{{- end }}

{{/* vllm.resources: requests and limits; cpu and memory are always set (given, else the other side, else the engine default), GPUs requests == limits. */}}
{{- define "vllm.resources" -}}
{{- $defaults := dict
      "vllm" (dict "requests" (dict "cpu" "4" "memory" "32Gi") "limits" (dict "cpu" "4" "memory" "32Gi"))
      "sim" (dict "requests" (dict "cpu" "100m" "memory" "128Mi") "limits" (dict "cpu" "1" "memory" "512Mi")) }}
{{- $d := index $defaults .Values.engine }}
{{- $given := .Values.resources }}
{{- $req := deepCopy ($given.requests | default dict) }}
{{- $lim := deepCopy ($given.limits | default dict) }}
{{- range $k := list "cpu" "memory" }}
{{- $r := get $req $k }}
{{- $l := get $lim $k }}
{{- if and (not $r) (not $l) }}
{{- $r = get $d.requests $k }}
{{- $l = get $d.limits $k }}
{{- else if not $r }}
{{- $r = $l }}
{{- else if not $l }}
{{- $l = $r }}
{{- end }}
{{- $_ := set $req $k $r }}
{{- $_ := set $lim $k $l }}
{{- end }}
{{- $gpus := int .Values.gpusPerReplica | toString }}
{{- $_ := set $req "nvidia.com/gpu" $gpus }}
{{- $_ := set $lim "nvidia.com/gpu" $gpus -}}
requests:
  {{- range $k, $v := $req }}
  {{ $k }}: {{ $v | toString | quote }}
  {{- end }}
limits:
  {{- range $k, $v := $lim }}
  {{ $k }}: {{ $v | toString | quote }}
  {{- end }}
{{- end }}

{{/* vllm.prefetchSelectorLabels: the labels of the prefetch Job's pod, distinct from vllm.selectorLabels so that neither the ReplicaSet nor the Service takes it. */}}
{{- define "vllm.prefetchSelectorLabels" -}}
app.kubernetes.io/name: {{ include "vllm.name" . }}-prefetch
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* vllm.prefetchLabels: the standard labels of the prefetch Job and its pod (component model-prefetch). */}}
{{- define "vllm.prefetchLabels" -}}
helm.sh/chart: {{ include "vllm.chart" . }}
{{ include "vllm.prefetchSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: model-prefetch
app.kubernetes.io/part-of: kubeinfer
kubeinfer.io/release: {{ .Release.Name | quote }}
kubeinfer.io/model: {{ include "vllm.modelLabel" . | quote }}
{{- end }}
