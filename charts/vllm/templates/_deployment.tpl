{{/*
vllm.deployment: the server Deployment for a root context whose .track is "" (the release's own) or "canary"
(a second Deployment, <fullname>-canary, from the release's values with canary.values merged over them; its pods
carry the selector labels too, so the Service sends them a share of the traffic, and kubeinfer.io/track: canary,
which only its own selector has). Pods belong to a ReplicaSet by owner reference, so the release's Deployment,
whose selector also matches the canary pods, never adopts or counts them.
*/}}
{{- define "vllm.deployment" -}}
{{- $gpus := int .Values.gpusPerReplica }}
{{- $cache := .Values.modelCache }}
{{- if and (eq $cache.type "hostPath") (not $cache.hostPath.path) }}
{{- fail "modelCache.hostPath.path is required when modelCache.type is hostPath" }}
{{- end }}
{{- if and (gt (int .Values.preStopSleepSeconds) 0) (ge (int .Values.preStopSleepSeconds) (int .Values.terminationGracePeriodSeconds)) }}
{{- fail (printf "preStopSleepSeconds (%d) must be less than terminationGracePeriodSeconds (%d): the server needs time to finish its requests after the sleep" (int .Values.preStopSleepSeconds) (int .Values.terminationGracePeriodSeconds)) }}
{{- end }}
{{- if has (clean $cache.mountPath) (list "/tmp" "/home/vllm" "/dev/shm") }}
{{- fail (printf "modelCache.mountPath cannot be %s: the chart mounts its own volume there" $cache.mountPath) }}
{{- end }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "vllm.fullname" . }}{{ with .track }}-{{ . }}{{ end }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "vllm.labels" . | nindent 4 }}
    {{- with .track }}
    kubeinfer.io/track: {{ . }}
    {{- end }}
spec:
  replicas: {{ .Values.replicaCount }}
  revisionHistoryLimit: 3
  selector:
    matchLabels:
      {{- include "vllm.selectorLabels" . | nindent 6 }}
      {{- with .track }}
      kubeinfer.io/track: {{ . }}
      {{- end }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 0
      maxSurge: 1
  template:
    metadata:
      labels:
        {{- include "vllm.labels" . | nindent 8 }}
        {{- with .track }}
        kubeinfer.io/track: {{ . }}
        {{- end }}
        {{- with .Values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        kubeinfer.io/startup-budget-seconds: {{ .Values.probes.startup.budgetSeconds | int | toString | quote }}
        {{- if $cache.prefetch.enabled }}
        # The prefetched revision: a new one rolls the pods (they load only what the cache holds), whatever the engine.
        kubeinfer.io/model-revision: {{ .Values.model.revision | quote }}
        {{- end }}
        {{- if .Values.metrics.podAnnotations }}
        prometheus.io/scrape: "true"
        prometheus.io/path: /metrics
        prometheus.io/port: {{ .Values.service.port | int | toString | quote }}
        {{- end }}
        {{- with .Values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      {{- with .Values.serviceAccountName }}
      serviceAccountName: {{ . }}
      {{- end }}
      automountServiceAccountToken: false
      securityContext:
        {{- include "vllm.podSecurityContext" . | nindent 8 }}
      terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
      {{- with .Values.scheduling.runtimeClassName }}
      runtimeClassName: {{ . }}
      {{- end }}
      {{- with .Values.scheduling.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      {{- with .Values.imagePullSecrets }}
      imagePullSecrets:
        {{- range . }}
        - name: {{ . }}
        {{- end }}
      {{- end }}
      {{- with .Values.scheduling.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.scheduling.gpuProducts }}
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
              - matchExpressions:
                  - key: nvidia.com/gpu.product
                    operator: In
                    values:
                      {{- range . }}
                      - {{ . | quote }}
                      {{- /* GFD's product label under time-slicing: <product>-SHARED */}}
                      - {{ printf "%s-SHARED" . | quote }}
                      {{- end }}
      {{- end }}
      {{- if or .Values.scheduling.gpuToleration .Values.scheduling.tolerations }}
      tolerations:
        {{- if .Values.scheduling.gpuToleration }}
        - key: nvidia.com/gpu
          operator: Exists
          effect: NoSchedule
        {{- end }}
        {{- with .Values.scheduling.tolerations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
      containers:
        - name: server
          image: {{ include "vllm.image" . | quote }}
          imagePullPolicy: {{ .Values.image.pullPolicy }}
          securityContext:
            {{- include "vllm.securityContext" . | nindent 12 }}
          {{- if eq .Values.engine "vllm" }}
          command:
            - vllm
            - serve
          {{- end }}
          args:
            {{- include "vllm.args" . | nindent 12 }}
          ports:
            - name: http
              containerPort: {{ .Values.service.port }}
              protocol: TCP
          env:
            - name: HF_HOME
              value: {{ $cache.mountPath | quote }}
            {{- if eq .Values.engine "vllm" }}
            # The root filesystem is read-only: vLLM, Triton, torch.compile and CUDA keep their caches under HOME.
            - name: HOME
              value: /home/vllm
            {{- if ne (include "vllm.runAsUser" .) "0" }}
            # The image has no passwd entry for other UIDs; torch asks getpass.getuser(), which reads USER first.
            - name: USER
              value: vllm
            {{- end }}
            {{- end }}
            {{- if or $cache.offline $cache.prefetch.enabled }}
            - name: HF_HUB_OFFLINE
              value: "1"
            {{- end }}
            {{- with .Values.hfToken }}
            {{- if .secretName }}
            - name: HF_TOKEN
              valueFrom:
                secretKeyRef:
                  name: {{ .secretName }}
                  key: {{ .secretKey }}
                  optional: {{ .optional }}
            - name: HUGGING_FACE_HUB_TOKEN
              valueFrom:
                secretKeyRef:
                  name: {{ .secretName }}
                  key: {{ .secretKey }}
                  optional: {{ .optional }}
            {{- end }}
            {{- end }}
            {{- with .Values.apiKey }}
            {{- if .secretName }}
            - name: VLLM_API_KEY
              valueFrom:
                secretKeyRef:
                  name: {{ .secretName }}
                  key: {{ .secretKey }}
            {{- end }}
            {{- end }}
            {{- if eq .Values.engine "sim" }}
            - name: POD_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            - name: POD_NAMESPACE
              valueFrom:
                fieldRef:
                  fieldPath: metadata.namespace
            {{- end }}
            {{- range .Values.extraEnv }}
            - name: {{ .name }}
              value: {{ .value | quote }}
            {{- end }}
          resources:
            {{- include "vllm.resources" . | nindent 12 }}
          {{- /* the sleep action: Kubernetes 1.30+ (PodLifecycleSleepAction); older clusters get no drain hook */}}
          {{- if and (gt (int .Values.preStopSleepSeconds) 0) (semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version) }}
          lifecycle:
            preStop:
              sleep:
                seconds: {{ int .Values.preStopSleepSeconds }}
          {{- end }}
          startupProbe:
            httpGet:
              path: /health
              port: http
            periodSeconds: {{ .Values.probes.startup.periodSeconds }}
            timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
            failureThreshold: {{ include "vllm.startupFailureThreshold" . }}
          readinessProbe:
            httpGet:
              path: /health
              port: http
            periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
            timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
            failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
          livenessProbe:
            httpGet:
              path: /health
              port: http
            periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
            timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
            failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
          volumeMounts:
            - name: model-cache
              mountPath: {{ $cache.mountPath }}
            - name: tmp
              mountPath: /tmp
            {{- if eq .Values.engine "vllm" }}
            - name: home
              mountPath: /home/vllm
            {{- end }}
            {{- if gt $gpus 1 }}
            - name: dshm
              mountPath: /dev/shm
            {{- end }}
      volumes:
        - name: model-cache
          {{- if eq $cache.type "pvc" }}
          persistentVolumeClaim:
            claimName: {{ include "vllm.cacheClaimName" . }}
          {{- else if eq $cache.type "hostPath" }}
          hostPath:
            path: {{ $cache.hostPath.path }}
            type: {{ $cache.hostPath.type }}
          {{- else }}
          emptyDir: {}
          {{- end }}
        - name: tmp
          emptyDir:
            sizeLimit: {{ .Values.scratch.sizeLimit }}
        {{- if eq .Values.engine "vllm" }}
        - name: home
          emptyDir:
            sizeLimit: {{ .Values.scratch.sizeLimit }}
        {{- end }}
        {{- if gt $gpus 1 }}
        - name: dshm
          emptyDir:
            medium: Memory
            sizeLimit: {{ .Values.shm.sizeLimit }}
        {{- end }}
{{- end }}
