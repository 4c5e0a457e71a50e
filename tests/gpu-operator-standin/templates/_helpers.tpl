{{/* gpu-operator.chart: chart name and version for the helm.sh/chart label. */}}
{{- define "gpu-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* gpu-operator.labels: the common labels of every object of the release. */}}
{{- define "gpu-operator.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "gpu-operator.chart" . }}
kubeinfer.io/stand-in: "true"
{{- end }}

{{/* gpu-operator.image: "<repository>/<image>:<version>" of one values section (dict "section" <map> "root" $). */}}
{{- define "gpu-operator.image" -}}
{{- $version := .section.version | default .root.Chart.AppVersion -}}
{{- printf "%s/%s:%s" .section.repository .section.image $version -}}
{{- end }}

{{/* gpu-operator.operand: one operand DaemonSet (dict "name" <string> "section" <map> "root" $ "extra" <map>). */}}
{{- define "gpu-operator.operand" -}}
{{- $root := .root -}}
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: {{ .name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "gpu-operator.labels" $root | nindent 4 }}
    app: {{ .name }}
    app.kubernetes.io/component: {{ .name }}
    {{- with $root.Values.daemonsets.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $root.Values.daemonsets.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  selector:
    matchLabels:
      app: {{ .name }}
  updateStrategy:
    {{- if and (eq $root.Values.daemonsets.updateStrategy "RollingUpdate") (ne .name "nvidia-driver-daemonset") }}
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: {{ $root.Values.daemonsets.rollingUpdate.maxUnavailable }}
    {{- else }}
    type: OnDelete
    {{- end }}
  template:
    metadata:
      labels:
        app: {{ .name }}
        app.kubernetes.io/component: {{ .name }}
        app.kubernetes.io/managed-by: gpu-operator
    spec:
      # The real operator selects nvidia.com/gpu.deploy.<operand>=true, a label it derives from
      # nvidia.com/gpu.present=true; the stand-in has no operator to derive it.
      nodeSelector:
        nvidia.com/gpu.present: "true"
      {{- with $root.Values.daemonsets.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $root.Values.daemonsets.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      containers:
        - name: {{ .name | trimSuffix "-daemonset" }}
          image: {{ include "gpu-operator.image" (dict "section" .section "root" $root) }}
          imagePullPolicy: {{ .section.imagePullPolicy | default "IfNotPresent" }}
          {{- with .extra.env }}
          env:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- with .extra.ports }}
          ports:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- with .extra.volumeMounts }}
          volumeMounts:
            {{- toYaml . | nindent 12 }}
          {{- end }}
      {{- with .extra.volumes }}
      volumes:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}
