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

{{/* The apps entry named .app (for ringside.sidecar), as JSON; {} for none. */}}
{{- define "ringside.appNamed" -}}
{{- $name := .app | default "" -}}
{{- $found := dict -}}
{{- range .Values.apps -}}
{{- if eq .name $name }}{{ $found = . }}{{ end -}}
{{- end -}}
{{- toJson $found -}}
{{- end -}}

{{/* The cache capacity of an app's sidecars and the value that says it, as
JSON {"capacity", "field"}: apps[].capacity, else sidecar.capacity. Takes
(dict "root" $ "app" $app-or-empty). */}}
{{- define "ringside.capacity" -}}
{{- if and .app .app.capacity -}}
{{- dict "capacity" .app.capacity "field" (printf "apps[%s].capacity" .app.name) | toJson -}}
{{- else -}}
{{- dict "capacity" .root.Values.sidecar.capacity "field" "sidecar.capacity" | toJson -}}
{{- end -}}
{{- end -}}

{{/* The apps with a capacity of their own as NAMESPACE/APP=SIZE,
comma-separated: the webhook sizes their sidecars by it. */}}
{{- define "ringside.appCapacityList" -}}
{{- $root := . -}}
{{- $list := list -}}
{{- range $app := .Values.apps -}}
{{- with $app.capacity -}}
{{- $list = append $list (printf "%s/%s=%s" (include "ringside.appNamespace" (dict "root" $root "app" $app)) $app.name .) -}}
{{- end -}}
{{- end -}}
{{- join "," $list -}}
{{- end -}}

{{/* Where the Secrets of an app's injected headers are mounted: key KEY of
Secret SECRET is the file <dir>/SECRET/KEY (src/inject/sidecar.rs,
HEADER_SECRETS_DIR). */}}
{{- define "ringside.headerSecretsDir" -}}/etc/ringside-headers{{- end -}}

{{/* The Secrets an app's injectHeaders read, as a JSON list of {"secret",
"keys"}: each Secret once, sorted by name, its keys sorted (the webhook
mounts them in the same order). Takes the app (or {}). */}}
{{- define "ringside.headerSecrets" -}}
{{- $bySecret := dict -}}
{{- range (.injectHeaders | default list) -}}
{{- $keys := get $bySecret .secret | default list -}}
{{- $_ := set $bySecret .secret (append $keys .key | uniq | sortAlpha) -}}
{{- end -}}
{{- $out := list -}}
{{- range $secret := keys $bySecret | sortAlpha -}}
{{- $out = append $out (dict "secret" $secret "keys" (get $bySecret $secret)) -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* Every app's header Secret keys as NAMESPACE/APP=SECRET/KEY,
comma-separated: the webhook mounts them into the app's sidecars. */}}
{{- define "ringside.headerSecretList" -}}
{{- $root := . -}}
{{- $list := list -}}
{{- range $app := .Values.apps -}}
{{- $namespace := include "ringside.appNamespace" (dict "root" $root "app" $app) -}}
{{- range include "ringside.headerSecrets" $app | fromJsonArray -}}
{{- $secret := .secret -}}
{{- range .keys -}}
{{- $list = append $list (printf "%s/%s=%s/%s" $namespace $app.name $secret .) -}}
{{- end -}}
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
ringside config.yaml: (dict "root" $ "app" $app-or-nil), in four layers:
1. what the chart derives: listen addresses (also set per pod by
   RINGSIDE_LISTEN / RINGSIDE_ADMIN_LISTEN), log level, cache capacity
   (apps[].capacity, else sidecar.capacity), origin (apps[].origin, else
   sidecar.origin) and, with an app, the cluster, whose peers are found
   through the app's headless Service;
2. sidecar.extraConfig, merged over it (ringside.mergeInto);
3. with an app, apps[].config, merged over that;
4. with an app, apps[].injectHeaders, appended to the inject_headers of the
   origin they name (ringside.addInjectHeaders).
Fields the chart sets from values of its own are refused in 2 and 3
(ringside.checkOverlay), naming the value to set instead.
*/}}
{{- define "ringside.config" -}}
{{- $v := .root.Values -}}
{{- $s := $v.sidecar -}}
{{- $capacity := include "ringside.capacity" . | fromJson -}}
{{- $cfg := dict
  "listen" (printf "127.0.0.1:%d" (int $s.port))
  "admin_listen" (printf "0.0.0.0:%d" (int $s.adminPort))
  "log_level" $s.logLevel
  "cache" (dict "capacity" $capacity.capacity) -}}
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
{{- $extra := $s.extraConfig | default dict -}}
{{- include "ringside.checkOverlay" (dict "field" "sidecar.extraConfig" "config" $extra) -}}
{{- include "ringside.mergeInto" (dict "dst" $cfg "src" $extra) -}}
{{- if .app -}}
{{- $own := .app.config | default dict -}}
{{- include "ringside.checkOverlay" (dict "field" (printf "apps[%s].config" .app.name) "config" $own) -}}
{{- include "ringside.mergeInto" (dict "dst" $cfg "src" $own) -}}
{{- include "ringside.addInjectHeaders" (dict "cfg" $cfg "app" .app) -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/*
Merge .src into .dst, in place (the merge of sidecar.extraConfig and
apps[].config): for each key of .src, where both values are maps they are
merged the same way, key by key; otherwise the value of .src replaces that
of .dst, whatever it is: a list replaces the whole list (an app's
cache.rules are its rules, not the global ones plus its own), and false, 0,
"" and [] replace too. Keys .src does not have keep .dst's value. Written
out here rather than left to Sprig's mergeOverwrite, whose handling of empty
values follows the mergo version of the Helm that renders it. .dst must be
the chart's own copy: what .src gives is copied in.
*/}}
{{- define "ringside.mergeInto" -}}
{{- $dst := .dst -}}
{{- range $key, $value := .src -}}
{{- $current := get $dst $key -}}
{{- if and (kindIs "map" $value) (kindIs "map" $current) -}}
{{- include "ringside.mergeInto" (dict "dst" $current "src" $value) -}}
{{- else -}}
{{- $_ := set $dst $key (deepCopy $value) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Refuse, in config merged over the chart's (.config, written at .field:
sidecar.extraConfig or apps[NAME].config), the fields the chart sets itself
or that would put a secret in a ConfigMap, naming the value to set instead.
Injected headers come from apps[].injectHeaders only: the chart then mounts
their Secret as a file, never an environment variable.
*/}}
{{- define "ringside.checkOverlay" -}}
{{- $field := .field -}}
{{- $config := .config -}}
{{- $secret := "a secret in a ConfigMap is readable by anyone who may read ConfigMaps; the chart mounts it from the peer Secret as a file" -}}
{{- $owned := dict
  "listen" "set by the chart: the sidecar listens on 127.0.0.1:<sidecar.port> (per pod: ringside.io/port)"
  "admin_listen" "set by the chart from sidecar.adminPort (per pod: ringside.io/admin-port)"
  "threads" "set by the chart: sidecar.threads (per pod: ringside.io/threads)"
  "shutdown_delay" "set by the chart: sidecar.waitBeforeExitSeconds (per pod: ringside.io/wait-before-exit-seconds)"
  "admin_token" (printf "%s (adminToken or existingPeerSecret)" $secret)
  "admin_token_file" (printf "set by the chart: %s (adminToken or existingPeerSecret)" $secret)
  "cache.capacity" "set by the chart from apps[].capacity, else sidecar.capacity (per pod: ringside.io/capacity), which the container's memory request and limit follow; set that instead"
  "origin.url" "set by the chart from apps[].origin, else sidecar.origin (per pod: ringside.io/origin)"
  "origin.inject_headers" "use apps[].injectHeaders (name, secret, key, prefix): the chart mounts the Secret into the sidecar as a file and writes the header's value_file"
  "cluster.peer_listen" "set by the chart from sidecar.peerPort"
  "cluster.secret" (printf "%s (peerSecret or existingPeerSecret)" $secret)
  "cluster.secret_file" (printf "set by the chart: %s (peerSecret or existingPeerSecret)" $secret)
  "cluster.membership" "set by the chart: an app's sidecars find each other through its headless Service"
  "cluster.tls" "set by the chart from apps[].peerTls" -}}
{{- range $path := keys $owned | sortAlpha -}}
{{- $node := $config -}}
{{- $found := true -}}
{{- range $part := splitList "." $path -}}
{{- if and $found (kindIs "map" $node) (hasKey $node $part) -}}
{{- $node = index $node $part -}}
{{- else -}}
{{- $found = false -}}
{{- end -}}
{{- end -}}
{{- if $found -}}
{{- fail (printf "%s.%s: %s" $field $path (get $owned $path)) -}}
{{- end -}}
{{- end -}}
{{- range $i, $upstream := $config.upstreams | default list -}}
{{- if and (kindIs "map" $upstream) (hasKey $upstream "inject_headers") -}}
{{- fail (printf "%s.upstreams[%d].inject_headers: use apps[].injectHeaders with origin: %s (name, secret, key, prefix): the chart mounts the Secret into the sidecar as a file and writes the header's value_file" $field $i ($upstream.origin | default "<the upstream's origin>")) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Append an app's injectHeaders to its config (.cfg, after the merges): each
to the inject_headers of the origin it names, the app's origin when it names
none (or that one), else the upstream whose origin it is, with value_file
the file its Secret key is mounted as (ringside.headerSecretsDir/SECRET/KEY).
A header named twice for one origin, or an origin the config does not
have, fails the render, naming the entry.
*/}}
{{- define "ringside.addInjectHeaders" -}}
{{- $cfg := .cfg -}}
{{- $app := .app -}}
{{- $origin := dig "origin" "url" "" $cfg -}}
{{- range $i, $h := $app.injectHeaders | default list -}}
{{- $field := printf "apps[%s].injectHeaders[%d]" $app.name $i -}}
{{- $target := dict -}}
{{- if or (not $h.origin) (eq $h.origin $origin) -}}
{{- if not (hasKey $cfg "origin") }}{{ $_ := set $cfg "origin" (dict) }}{{ end -}}
{{- $target = $cfg.origin -}}
{{- else -}}
{{- $known := list -}}
{{- $found := false -}}
{{- range $upstream := $cfg.upstreams | default list -}}
{{- $known = append $known ($upstream.origin | default "") -}}
{{- if eq ($upstream.origin | default "") $h.origin -}}
{{- $target = $upstream -}}
{{- $found = true -}}
{{- end -}}
{{- end -}}
{{- if not $found -}}
{{- fail (printf "%s.origin: %q is neither the app's origin (%s) nor an upstream's in its config (upstreams[].origin: %s); leave it out for the app's origin" $field $h.origin ($origin | default "none: set per pod") ($known | join ", " | default "none")) -}}
{{- end -}}
{{- end -}}
{{- $headers := get $target "inject_headers" | default list -}}
{{- range $headers -}}
{{- if eq (lower .name) (lower $h.name) -}}
{{- fail (printf "%s.name: %s is injected into %s twice; one entry per header and origin" $field $h.name ($h.origin | default "the app's origin")) -}}
{{- end -}}
{{- end -}}
{{- $entry := dict "name" $h.name "value_file" (printf "%s/%s/%s" (include "ringside.headerSecretsDir" .) $h.secret $h.key) -}}
{{- with $h.prefix }}{{ $_ := set $entry "prefix" . }}{{ end -}}
{{- if hasKey $h "replace" }}{{ $_ := set $entry "replace" $h.replace }}{{ end -}}
{{- $_ := set $target "inject_headers" (append $headers $entry) -}}
{{- end -}}
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
{{- $app := include "ringside.appNamed" . | fromJson -}}
{{- $capacity := include "ringside.capacity" (dict "root" . "app" $app) | fromJson -}}
{{- $memory := include "ringside.memory" (merge (dict "capacity" $capacity.capacity "capacityField" $capacity.field) $s) | fromJson -}}
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
      value: {{ include "ringside.toBytes" $capacity.capacity | quote }}
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
    {{- /* The Secrets of the app's injected headers, as files its config
    names (value_file), never environment variables. */}}
    {{- if include "ringside.headerSecrets" $app | fromJsonArray }}
    - name: ringside-headers
      mountPath: {{ include "ringside.headerSecretsDir" . }}
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
{{- with include "ringside.headerSecrets" (include "ringside.appNamed" . | fromJson) | fromJsonArray }}
{{- /* Only the keys the headers read, each at SECRET/KEY. */}}
- name: ringside-headers
  projected:
    sources:
      {{- range . }}
      {{- $secret := .secret }}
      - secret:
          name: {{ $secret }}
          items:
            {{- range .keys }}
            - key: {{ . }}
              path: {{ $secret }}/{{ . }}
            {{- end }}
      {{- end }}
{{- end }}
{{- end -}}

{{/*
The sidecar's memory request and limit, as JSON {"request", "limit"}:
sidecar.memoryRequest / sidecar.memoryLimit where set, else the formula
derived from the measured footprint (README, Memory), each in MiB rounded up:
request = 1.15 x capacity + 40 MiB + 40 KiB x memoryConnections, limit =
request + memoryHeadroom. src/inject/memory.rs computes the same for the
webhook, and tests/inject_webhook.rs checks both against the formula. Takes
the sidecar values, with the capacity of an app's sidecars and the value
that says it (capacityField, for the error) where it has one.
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
{{- fail (printf "sidecar.memoryRequest, sidecar.memoryLimit, %s: memory request %s is above the memory limit %s; without an explicit value the request is 1.15 x the cache capacity + 40 MiB + 40 KiB x memoryConnections and the limit the request + memoryHeadroom" (.capacityField | default "sidecar.capacity") $request $limit) -}}
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
