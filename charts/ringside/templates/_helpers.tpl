{{/*
Names. Every helper takes a context with .Values and .Release, so they also
work when a parent chart calls them with its own context (see ringside.sidecar).
*/}}
{{- define "ringside.name" -}}
{{- default "ringside" .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "ringside.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "ringside.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ringside.labels" -}}
app.kubernetes.io/name: {{ include "ringside.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- if .Chart }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
{{- end -}}

{{/*
Labels of every Prometheus Operator object (ServiceMonitor, PodMonitor,
PrometheusRule): the chart's, monitoring.selectorLabels (what the
Prometheus' selectors match, e.g. release: kube-prometheus-stack), and the
object's own extra labels: (dict "root" $ "labels" $extra).
*/}}
{{- define "ringside.monitoringLabels" -}}
{{- $labels := merge (dict) (.labels | default dict) (.root.Values.monitoring.selectorLabels | default dict) -}}
{{- include "ringside.labels" .root }}
{{- with $labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Target labels of an app's sidecars, set by its ServiceMonitor or PodMonitor:
app (the dashboards and rules group by it; namespace and pod come from the
operator) and job="ringside" (RingsideSidecarDown matches it). Takes the app.
*/}}
{{- define "ringside.monitorRelabelings" -}}
- targetLabel: app
  replacement: {{ .name | quote }}
- targetLabel: job
  replacement: ringside
{{- end -}}

{{- define "ringside.webhookSelectorLabels" -}}
app.kubernetes.io/name: {{ include "ringside.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end -}}

{{/* The image: image.tag, else the chart's appVersion; with image.digest,
pinned to it (repository:tag@sha256:..., or repository@sha256:... without a
tag), so that what runs is exactly what was pushed, as admission policies
that require digests want. A parent chart that includes ringside.sidecar
passes "Chart" (.Subcharts.ringside.Chart) or sets image.tag or
image.digest, so that it injects what the webhook does, never a floating
tag. */}}
{{- define "ringside.image" -}}
{{- $tag := default (.Chart | default dict).AppVersion .Values.image.tag -}}
{{- $digest := .Values.image.digest | default "" -}}
{{- if and (not $tag) (not $digest) -}}
{{- fail "ringside.sidecar: set ringside.image.tag or ringside.image.digest, or pass \"Chart\" .Subcharts.ringside.Chart (the webhook injects the chart's appVersion)" -}}
{{- end -}}
{{- .Values.image.repository -}}
{{- with $tag }}:{{ . }}{{ end -}}
{{- with $digest }}@{{ . }}{{ end -}}
{{- end -}}

{{- define "ringside.configMapName" -}}{{ include "ringside.fullname" . }}-config{{- end -}}
{{- define "ringside.secretName" -}}{{ default (printf "%s-peer-secret" (include "ringside.fullname" .)) .Values.existingPeerSecret }}{{- end -}}
{{- define "ringside.webhookName" -}}{{ include "ringside.fullname" . }}-webhook{{- end -}}

{{/* Namespace of an app: (dict "root" $ "app" $app). */}}
{{- define "ringside.appNamespace" -}}
{{- default .root.Release.Namespace .app.namespace -}}
{{- end -}}

{{/* Headless Service of an app's peers: (dict "root" $ "app" $app). */}}
{{- define "ringside.peersService" -}}
{{- printf "%s-%s-peers" (include "ringside.fullname" .root) .app.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The apps as NAMESPACE/NAME, comma-separated: the webhook refuses a
ringside.io/app that is not one of its pod's namespace's (no ConfigMap). */}}
{{- define "ringside.appList" -}}
{{- $root := . -}}
{{- $list := list -}}
{{- range .Values.apps -}}
{{- $list = append $list (printf "%s/%s" (include "ringside.appNamespace" (dict "root" $root "app" .)) .name) -}}
{{- end -}}
{{- join "," $list -}}
{{- end -}}

{{/* The apps with peer TLS as NAMESPACE/APP=SECRET, comma-separated: the
webhook mounts SECRET into their sidecars. */}}
{{- define "ringside.peerTlsList" -}}
{{- $root := . -}}
{{- $list := list -}}
{{- range $app := .Values.apps -}}
{{- with $app.peerTls -}}
{{- $list = append $list (printf "%s/%s=%s" (include "ringside.appNamespace" (dict "root" $root "app" $app)) $app.name .secretName) -}}
{{- end -}}
{{- end -}}
{{- join "," $list -}}
{{- end -}}

{{/* The peer TLS Secret of the app named .app (for ringside.sidecar), or "". */}}
{{- define "ringside.appPeerTlsSecret" -}}
{{- $name := .app | default "" -}}
{{- range .Values.apps -}}
{{- if and (eq .name $name) .peerTls -}}{{ .peerTls.secretName }}{{- end -}}
{{- end -}}
{{- end -}}

{{/* Every namespace that needs the ConfigMaps and the Secret: release +
apps + namespaces (for pods of no app, e.g. namespace-wide injection). */}}
{{- define "ringside.namespaces" -}}
{{- $root := . -}}
{{- $list := list .Release.Namespace -}}
{{- range .Values.apps -}}
{{- $list = append $list (include "ringside.appNamespace" (dict "root" $root "app" .)) -}}
{{- end -}}
{{- range .Values.namespaces -}}
{{- $list = append $list . -}}
{{- end -}}
{{- $list | uniq | toJson -}}
{{- end -}}

{{/*
ringside config.yaml: (dict "root" $ "app" $app-or-nil). With an app, the
cluster is on and finds its peers through the app's headless Service.
Listen addresses are also set per pod by RINGSIDE_LISTEN/RINGSIDE_ADMIN_LISTEN.
*/}}
{{- define "ringside.config" -}}
{{- $v := .root.Values -}}
{{- $s := $v.sidecar -}}
{{- $cfg := dict
  "listen" (printf "127.0.0.1:%d" (int $s.port))
  "admin_listen" (printf "0.0.0.0:%d" (int $s.adminPort))
  "log_level" $s.logLevel
  "cache" (dict "capacity" $s.capacity) -}}
{{- $origin := $s.origin -}}
{{- if and .app .app.origin }}{{ $origin = .app.origin }}{{ end -}}
{{- if $origin }}{{ $_ := set $cfg "origin" (dict "url" $origin) }}{{ end -}}
{{- if .app -}}
{{- $dns := printf "%s.%s.svc.%s" (include "ringside.peersService" .) (include "ringside.appNamespace" .) $v.clusterDomain -}}
{{- $_ := set $cfg "cluster" (dict
  "enabled" true
  "peer_listen" (printf "0.0.0.0:%d" (int $s.peerPort))
  "membership" (dict "dns" (dict "name" $dns "port" (int $s.peerPort)))) -}}
{{- if .app.peerTls -}}
{{- /* The Secret (apps[].peerTls.secretName) is mounted there; its
certificate names the peers' Service, shared by every replica. */ -}}
{{- $_ := set $cfg.cluster "tls" (dict
  "ca_file" "/etc/ringside-peer-tls/ca.crt"
  "cert_file" "/etc/ringside-peer-tls/tls.crt"
  "key_file" "/etc/ringside-peer-tls/tls.key"
  "peer_name" $dns) -}}
{{- end -}}
{{- end -}}
{{- $cfg = mustMergeOverwrite $cfg (deepCopy $s.extraConfig) -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/*
ringside.sidecar: the ringside container for manual injection, the same one
the webhook injects. Include it in your pod's `containers` (or, for a native
sidecar on Kubernetes 1.29+, in `initContainers` with "native" true):

  containers:
    {{- include "ringside.sidecar" (dict "Values" .Values.ringside "Release" .Release "app" "catalog") | nindent 4 }}
  volumes:
    {{- include "ringside.sidecarVolumes" (dict "Values" .Values.ringside "Release" .Release "app" "catalog") | nindent 4 }}

Keys: Values (this chart's values), Release, app (optional: an apps[].name,
for the cluster config and its peer TLS Secret), native (optional bool), Chart
(optional: .Subcharts.ringside.Chart, for the image tag when ringside.image.tag
is not set).
*/}}
{{- define "ringside.sidecar" -}}
{{- $s := .Values.sidecar -}}
{{- $memory := include "ringside.memory" $s | fromJson -}}
- name: ringside
  image: {{ include "ringside.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if .native }}
  restartPolicy: Always
  {{- end }}
  ports:
    - name: ringside-admin
      containerPort: {{ $s.adminPort }}
      protocol: TCP
    - name: ringside-peer
      containerPort: {{ $s.peerPort }}
      protocol: TCP
  env:
    - name: POD_IP
      valueFrom:
        fieldRef:
          fieldPath: status.podIP
    - name: RINGSIDE_CONFIG
      value: /etc/ringside/config.yaml
    - name: RINGSIDE_LISTEN
      value: "127.0.0.1:{{ $s.port }}"
    - name: RINGSIDE_ADMIN_LISTEN
      value: "0.0.0.0:{{ $s.adminPort }}"
    - name: RINGSIDE_PEER_LISTEN
      value: "0.0.0.0:{{ $s.peerPort }}"
    - name: RINGSIDE_CAPACITY
      value: {{ include "ringside.toBytes" $s.capacity | quote }}
    - name: RINGSIDE_THREADS
      value: {{ $s.threads | int | toString | quote }}
    {{- /* The Secret is mounted as files (ringside-secret below), never
    put in the environment, and read again when the kubelet updates it. */}}
    - name: RINGSIDE_CLUSTER_SECRET_FILE
      value: /etc/ringside-secret/secret
    - name: RINGSIDE_ADMIN_TOKEN_FILE
      value: /etc/ringside-secret/admin-token
    {{- if and (not .native) (gt (int $s.waitBeforeExitSeconds) 0) }}
    - name: RINGSIDE_SHUTDOWN_DELAY
      value: "{{ $s.waitBeforeExitSeconds }}s"
    {{- end }}
  resources:
    requests:
      cpu: {{ $s.cpuRequest }}
      memory: {{ $memory.request }}
    limits:
      memory: {{ $memory.limit }}
      {{- with $s.cpuLimit }}
      cpu: {{ . }}
      {{- end }}
  startupProbe:
    httpGet: {path: /readyz, port: ringside-admin, scheme: HTTP}
    periodSeconds: 1
    timeoutSeconds: 2
    failureThreshold: 30
  readinessProbe:
    httpGet: {path: /readyz, port: ringside-admin, scheme: HTTP}
    periodSeconds: 5
    timeoutSeconds: 2
    failureThreshold: 3
  livenessProbe:
    httpGet: {path: /healthz, port: ringside-admin, scheme: HTTP}
    periodSeconds: 10
    timeoutSeconds: 2
    failureThreshold: 3
  {{- with $s.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: ringside-config
      mountPath: /etc/ringside
      readOnly: true
    - name: ringside-secret
      mountPath: /etc/ringside-secret
      readOnly: true
    - name: ringside-tmp
      mountPath: /tmp
    {{- if include "ringside.appPeerTlsSecret" . }}
    - name: ringside-peer-tls
      mountPath: /etc/ringside-peer-tls
      readOnly: true
    {{- end }}
  terminationMessagePolicy: FallbackToLogsOnError
{{- end -}}

{{- define "ringside.sidecarVolumes" -}}
- name: ringside-config
  configMap:
    name: {{ include "ringside.configMapName" . }}{{ with .app }}-{{ . }}{{ end }}
- name: ringside-secret
  secret:
    secretName: {{ include "ringside.secretName" . }}
- name: ringside-tmp
  emptyDir:
    medium: Memory
    sizeLimit: 16Mi
{{- with include "ringside.appPeerTlsSecret" . }}
- name: ringside-peer-tls
  secret:
    secretName: {{ . }}
{{- end }}
{{- end -}}

{{/*
The sidecar's memory request and limit, as JSON {"request", "limit"}:
sidecar.memoryRequest / sidecar.memoryLimit where set, else the formula
derived from the measured footprint (README, Memory), each in MiB rounded up:
request = 1.15 x capacity + 40 MiB + 40 KiB x memoryConnections, limit =
request + memoryHeadroom. src/inject/memory.rs computes the same for the
webhook, and tests/inject_webhook.rs checks both against the formula. Takes
the sidecar values.
*/}}
{{- define "ringside.memory" -}}
{{- $mib := 1048576 -}}
{{- $capacity := include "ringside.toBytes" .capacity | int64 -}}
{{- $cache := div (add (mul $capacity 115) 99) 100 -}}
{{- $bytes := add $cache (mul 40 $mib) (mul (int64 .memoryConnections) 40960) -}}
{{- $requestMi := div (add $bytes (sub $mib 1)) $mib -}}
{{- $headroomMi := div (add (include "ringside.toBytes" .memoryHeadroom | int64) (sub $mib 1)) $mib -}}
{{- $limitMi := add $requestMi $headroomMi -}}
{{- $request := default (printf "%dMi" $requestMi) .memoryRequest -}}
{{- $limit := default (printf "%dMi" $limitMi) .memoryLimit -}}
{{- if gt (include "ringside.toBytes" $request | int64) (include "ringside.toBytes" $limit | int64) -}}
{{- fail (printf "sidecar.memoryRequest, sidecar.memoryLimit, sidecar.capacity: memory request %s is above the memory limit %s; without an explicit value the request is 1.15 x the cache capacity + 40 MiB + 40 KiB x memoryConnections and the limit the request + memoryHeadroom" $request $limit) -}}
{{- end -}}
{{- dict "request" $request "limit" $limit | toJson -}}
{{- end -}}

{{/* Bytes (rounded down) of a ringside size ("256MiB", "1GB", "1048576") or
a Kubernetes quantity ("64Mi", "1.5Gi", "2G"). */}}
{{- define "ringside.toBytes" -}}
{{- $v := toString . | trim -}}
{{- $number := regexFind "^[0-9.]+" $v -}}
{{- $unit := trimPrefix $number $v -}}
{{- $mult := dict "" 1 "B" 1 "k" 1000 "KB" 1000 "M" 1000000 "MB" 1000000 "G" 1000000000 "GB" 1000000000 "T" 1000000000000 "Ki" 1024 "KiB" 1024 "Mi" 1048576 "MiB" 1048576 "Gi" 1073741824 "GiB" 1073741824 "Ti" 1099511627776 -}}
{{- if or (not $number) (not (hasKey $mult $unit)) -}}
{{- fail (printf "%q is not a size such as 256MiB or a memory quantity such as 512Mi" $v) -}}
{{- end -}}
{{- floor (mulf (float64 $number) (get $mult $unit)) | int64 -}}
{{- end -}}

{{- /* One webhook of the MutatingWebhookConfiguration: (dict "root" $
"hook" (dict "name" "ca") "namespaceWide" bool). The first
(inject.ringside.io, /mutate) takes pods that ask with the annotation, in
namespaces not labelled ringside.io/inject=enabled; the second
(namespace.inject.ringside.io, /mutate/namespace) every pod of the labelled
namespaces that does not say "false" (as istio-injection=enabled does). A
pod goes to one of them, never both. */ -}}
{{- define "ringside.mutatingWebhook" -}}
{{- $v := .root.Values -}}
- name: {{ ternary "namespace.inject.ringside.io" "inject.ringside.io" .namespaceWide }}
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: {{ $v.webhook.failurePolicy }}
  timeoutSeconds: {{ $v.webhook.timeoutSeconds }}
  reinvocationPolicy: Never
  clientConfig:
    service:
      name: {{ .hook.name }}
      namespace: {{ .root.Release.Namespace }}
      path: {{ ternary "/mutate/namespace" "/mutate" .namespaceWide }}
      port: 443
    {{- with .hook.ca }}
    caBundle: {{ . }}
    {{- end }}
  rules:
    - operations: [CREATE]
      apiGroups: [""]
      apiVersions: [v1]
      resources: [pods]
      scope: Namespaced
  namespaceSelector:
    {{- with $v.webhook.namespaceSelector.matchLabels }}
    matchLabels:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    matchExpressions:
      {{- with $v.webhook.namespaceSelector.matchExpressions }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
      - key: kubernetes.io/metadata.name
        operator: NotIn
        values: [kube-system, kube-node-lease, {{ .root.Release.Namespace }}]
      {{- if .namespaceWide }}
      - key: ringside.io/inject
        operator: In
        values: [enabled]
      {{- else if $v.webhook.namespaceInjection }}
      - key: ringside.io/inject
        operator: NotIn
        values: [enabled]
      {{- end }}
  objectSelector:
    {{- with $v.webhook.objectSelector.matchLabels }}
    matchLabels:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    matchExpressions:
      {{- with $v.webhook.objectSelector.matchExpressions }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
      - key: ringside.io/webhook
        operator: DoesNotExist
  {{- if $v.webhook.matchConditions }}
  matchConditions:
    {{- if .namespaceWide }}
    # Every pod of the namespace, but those that opt out.
    - name: not-opted-out
      expression: >-
        !(has(object.metadata.annotations) &&
        'ringside.io/inject' in object.metadata.annotations &&
        object.metadata.annotations['ringside.io/inject'] == 'false')
    {{- else }}
    # Asked for injection, or nearly (the webhook warns about "True",
    # "enabled" or a label instead of the annotation); never "false".
    - name: annotated-for-injection
      expression: >-
        (has(object.metadata.annotations) &&
        'ringside.io/inject' in object.metadata.annotations &&
        object.metadata.annotations['ringside.io/inject'] != 'false') ||
        (has(object.metadata.labels) && 'ringside.io/inject' in object.metadata.labels)
    {{- end }}
  {{- end }}
{{- end -}}
