{{/*
Named templates. Every template here takes the chart's own context (.Values, .Release, .Chart), so
a parent (umbrella) chart that lists dlp-sensor as a dependency can add the sensor to a pod it owns:

  initContainers:
    {{- include "dlp-sensor.sidecarContainer" (index .Subcharts "dlp-sensor") | nindent 4 }}
  volumes:
    {{- include "dlp-sensor.volumes" (index .Subcharts "dlp-sensor") | nindent 4 }}
  metadata.annotations:
    {{- include "dlp-sensor.podAnnotations" (index .Subcharts "dlp-sensor") | nindent 4 }}

None of them reads a file of this chart by path (.Template.BasePath), so they render the same from
a parent. See docs/deploy-helm.md, "Adding the sensor to an existing workload".
*/}}

{{- define "dlp-sensor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dlp-sensor.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "dlp-sensor.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "dlp-sensor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* selector labels for one component: sidecar | icap | extproc | workers */}}
{{- define "dlp-sensor.selector" -}}
app.kubernetes.io/name: {{ include "dlp-sensor.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* image.digest, when set, wins over the tag: repository@sha256:... */}}
{{- define "dlp-sensor.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The fewest replicas a component runs: autoscaling.minReplicas when autoscaled, else replicas. */}}
{{- define "dlp-sensor.minReplicas" -}}
{{- $a := .autoscaling | default dict -}}
{{- if $a.enabled }}{{ int $a.minReplicas }}{{ else }}{{ int .replicas }}{{ end -}}
{{- end -}}

{{- define "dlp-sensor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "dlp-sensor.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret the chart generates (admin token, HMAC key, credentials given inline). */}}
{{- define "dlp-sensor.generatedSecretName" -}}
{{- printf "%s-secret" (include "dlp-sensor.fullname" .) -}}
{{- end -}}

{{/* Where the admin token and HMAC key come from: sensor.existingSecret, else the generated one. */}}
{{- define "dlp-sensor.secretName" -}}
{{- default (include "dlp-sensor.generatedSecretName" .) .Values.sensor.existingSecret -}}
{{- end -}}

{{/*
Sink fields that hold a credential. A value given inline (a string) is moved into the generated
Secret; a value {secretKeyRef: {name, key}} is read from that Secret. Either way the sensor config
in the ConfigMap carries only `<field>_env: DLP_SINK_<i>_<FIELD>` and the container gets the
variable from a secretKeyRef.
*/}}
{{- define "dlp-sensor.sinkCredentialFields" -}}
{{- toJson (dict "webhook" (list "url") "slack" (list "url") "pagerduty" (list "routing_key") "splunk_hec" (list "token") "syslog" (list) "stdout" (list) "jsonl" (list)) -}}
{{- end -}}

{{/*
The credentials as one list of {env, secret, key, inline}: `inline` is the value when it was given
inline (it goes into the generated Secret under `key`), empty when it comes from the user's Secret.
Returned as JSON ({"items": [...]}) because templates can only return text.
*/}}
{{- define "dlp-sensor.credentials" -}}
{{- $gen := include "dlp-sensor.generatedSecretName" . -}}
{{- $fields := include "dlp-sensor.sinkCredentialFields" . | fromJson -}}
{{- $items := list -}}
{{- range $i, $sink := .Values.alerts.sinks -}}
{{- range $f := (get $fields $sink.type | default list) -}}
{{- $v := get $sink $f -}}
{{- if $v -}}
{{- $env := printf "DLP_SINK_%d_%s" $i (upper $f) -}}
{{- if kindIs "map" $v -}}
{{- $items = append $items (dict "env" $env "secret" $v.secretKeyRef.name "key" $v.secretKeyRef.key "inline" "") -}}
{{- else -}}
{{- $items = append $items (dict "env" $env "secret" $gen "key" (printf "sink-%d-%s" $i (replace "_" "-" $f)) "inline" (toString $v)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $k := .Values.kafka -}}
{{- if $k.existingSecret -}}
{{- $items = append $items (dict "env" "DLP_KAFKA_SASL_USERNAME" "secret" $k.existingSecret "key" $k.existingSecretKeys.username "inline" "") -}}
{{- $items = append $items (dict "env" "DLP_KAFKA_SASL_PASSWORD" "secret" $k.existingSecret "key" $k.existingSecretKeys.password "inline" "") -}}
{{- else if $k.password -}}
{{- $items = append $items (dict "env" "DLP_KAFKA_SASL_USERNAME" "secret" $gen "key" "kafka-username" "inline" $k.username) -}}
{{- $items = append $items (dict "env" "DLP_KAFKA_SASL_PASSWORD" "secret" $gen "key" "kafka-password" "inline" $k.password) -}}
{{- end -}}
{{- toJson (dict "items" $items) -}}
{{- end -}}

{{/* Whether the chart renders its own Secret: no existingSecret for the keys, or credentials inline. */}}
{{- define "dlp-sensor.generatesSecret" -}}
{{- $inline := 0 -}}
{{- range (include "dlp-sensor.credentials" . | fromJson).items -}}
{{- if .inline }}{{- $inline = add1 $inline -}}{{- end -}}
{{- end -}}
{{- if or (not .Values.sensor.existingSecret) (gt $inline 0) -}}true{{- end -}}
{{- end -}}

{{/*
Exact-data-match indexes (edm.indexes): each is mounted read-only at /etc/dlp-sensor-edm/<name>/ from
its Secret (only the index's own key of it) or its volume source, and listed in the config's
`indexes:` by that path; the sensor reloads an index when its file changes (a Secret update swaps it).
An index's own HMAC key (keySecret) reaches the container as DLP_EDM_<i>_KEY, never the ConfigMap:
the entry carries `key_env`. {"items": [config entries]} in JSON.
*/}}
{{- define "dlp-sensor.edmIndexes" -}}
{{- $out := list -}}
{{- $seen := dict -}}
{{- range $i, $x := (.Values.edm | default dict).indexes -}}
{{- if hasKey $seen $x.name }}{{- fail (printf "edm.indexes[%d].name %q is used twice (each index needs a name of its own)" $i $x.name) -}}{{- end -}}
{{- $_ := set $seen $x.name true -}}
{{- $file := $x.file -}}
{{- if $x.existingSecret }}{{- $file = $x.secretKey | default "index.edm" -}}{{- end -}}
{{- $e := dict "name" $x.name "path" (printf "/etc/dlp-sensor-edm/%s/%s" $x.name $file) -}}
{{- if hasKey $x "minFields" }}{{- $_ := set $e "min_fields" $x.minFields -}}{{- end -}}
{{- if hasKey $x "trip" }}{{- $_ := set $e "trip" $x.trip -}}{{- end -}}
{{- if hasKey $x "alert" }}{{- $_ := set $e "alert" $x.alert -}}{{- end -}}
{{- if $x.keySecret }}{{- $_ := set $e "key_env" (printf "DLP_EDM_%d_KEY" $i) -}}{{- end -}}
{{- $out = append $out $e -}}
{{- end -}}
{{- toJson (dict "items" $out) -}}
{{- end -}}

{{/* The index volumes (dlp-edm-<i>), a YAML list; empty without edm.indexes. Takes the chart context. */}}
{{- define "dlp-sensor.edmVolumes" -}}
{{- range $i, $x := (.Values.edm | default dict).indexes }}
{{- if $x.existingSecret }}
- name: dlp-edm-{{ $i }}
  secret:
    secretName: {{ $x.existingSecret }}
    items: [{key: {{ $x.secretKey | default "index.edm" | quote }}, path: {{ $x.secretKey | default "index.edm" | quote }}}]
{{- else }}
- {{ toYaml (merge (dict "name" (printf "dlp-edm-%d" $i)) (deepCopy $x.volume)) | nindent 2 | trim }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
The sensor's config file (sensor.yaml) as a dict, in JSON. `.Values.config` is merged over it last,
for keys the chart does not model. Credentials never appear here: the sinks carry `<field>_env`.
*/}}
{{- define "dlp-sensor.configJson" -}}
{{- $s := .Values.sensor -}}
{{- $sigs := list -}}
{{- range $name, $_ := $s.extraSignatures -}}
{{- $sigs = append $sigs (printf "/etc/dlp-sensor/signatures-%s.yaml" $name) -}}
{{- end -}}
{{- $proxy := dict "listen" (printf "0.0.0.0:%v" $s.ports.proxy) "upstream" (printf "http://127.0.0.1:%v" .Values.sidecar.app.port) "mode" $s.mode "holdback_kib" $s.holdbackKiB -}}
{{- if $s.trustForwarded }}{{- $_ := set $proxy "trust_forwarded" true -}}{{- end -}}
{{- with $s.onError }}{{- $_ := set $proxy "on_error" . -}}{{- end -}}
{{- with $s.routes }}{{- $_ := set $proxy "routes" . -}}{{- end -}}
{{- $fields := include "dlp-sensor.sinkCredentialFields" . | fromJson -}}
{{- $sinks := list -}}
{{- range $i, $sink := .Values.alerts.sinks -}}
{{- $out := deepCopy $sink -}}
{{- range $f := (get $fields $sink.type | default list) -}}
{{- if get $sink $f -}}
{{- $_ := unset $out $f -}}
{{- $_ := set $out (printf "%s_env" $f) (printf "DLP_SINK_%d_%s" $i (upper $f)) -}}
{{- end -}}
{{- end -}}
{{- $sinks = append $sinks $out -}}
{{- end -}}
{{- $cfg := dict "state_dir" "/var/lib/dlp-sensor/state" "signatures" $sigs "proxy" $proxy "metrics" (printf "0.0.0.0:%v" $s.ports.metrics) "admin" (dict "listen" (printf "127.0.0.1:%v" $s.ports.admin)) "alerts" (dict "source_ip" .Values.alerts.sourceIp "sinks" $sinks) "takedown" (dict "query" $s.takedownQuery) -}}
{{- with $s.policy }}{{- $_ := set $cfg "policy" . -}}{{- end -}}
{{- with $s.trustedProxies }}{{- $_ := set $cfg "clients" (dict "trusted_proxies" .) -}}{{- end -}}
{{- with $s.siteHosts }}{{- $_ := set $cfg "site" (dict "hosts" .) -}}{{- end -}}
{{- with (include "dlp-sensor.edmIndexes" . | fromJson).items }}{{- $_ := set $cfg "indexes" . -}}{{- end -}}
{{- $k := .Values.kafka -}}
{{- if $k.bootstrap -}}
{{- $kafka := dict "topic_prefix" $k.topicPrefix "security_protocol" $k.securityProtocol "mirror" (dict "enabled" $k.mirror "overflow" $k.overflow) "worker" (dict "group" $k.group) -}}
{{- with $k.saslMechanism }}{{- $_ := set $kafka "sasl_mechanism" . -}}{{- end -}}
{{- $_ := set $cfg "kafka" $kafka -}}
{{- end -}}
{{- toJson (mustMergeOverwrite $cfg (deepCopy (.Values.config | default dict))) -}}
{{- end -}}

{{/*
Pod annotations: the user's, plus a checksum of what the sensor reads only at start-up (the
credentials it takes from the environment). The checksum covers the values given and the Secret
names, never a generated random value, so two renders of the same values give the same pod
template and `helm upgrade` restarts pods only when a credential really changed. The config file
itself reloads live and is not part of it.
*/}}
{{/* The per-index key Secrets (read from the environment at start: a change restarts the pods). */}}
{{- define "dlp-sensor.edmKeyRefs" -}}
{{- $out := list -}}
{{- range $i, $x := (.Values.edm | default dict).indexes }}{{- with $x.keySecret }}{{- $out = append $out (list $i .name .key) -}}{{- end -}}{{- end -}}
{{- toJson (dict "items" $out) -}}
{{- end -}}

{{- define "dlp-sensor.podAnnotations" -}}
{{- $in := dict "existingSecret" .Values.sensor.existingSecret "adminToken" .Values.sensor.adminToken "hmacKey" .Values.sensor.hmacKey "credentials" (include "dlp-sensor.credentials" . | fromJson).items "edmKeys" (include "dlp-sensor.edmKeyRefs" . | fromJson).items -}}
checksum/credentials: {{ toJson $in | sha256sum }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The scheduling and identity fields every pod of the chart shares. */}}
{{- define "dlp-sensor.podSpecCommon" -}}
serviceAccountName: {{ include "dlp-sensor.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automount }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
The sensor container. Takes (dict "root" <chart context> "args" <list> "ports" <list> "env" <list>),
shared by the sidecar, the standalone deployments and the sidecar templates for existing workloads.
*/}}
{{- define "dlp-sensor.container" -}}
{{- $root := .root -}}
{{- $secret := include "dlp-sensor.secretName" $root -}}
- name: dlp-sensor
  image: {{ include "dlp-sensor.image" $root }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  args:
    {{- toYaml .args | nindent 4 }}
  env:
    - name: DLP_SENSOR_ADMIN_TOKEN
      valueFrom:
        secretKeyRef: {name: {{ $secret }}, key: {{ $root.Values.sensor.existingSecretKeys.adminToken }}}
    - name: DLP_SENSOR_HMAC_KEY
      valueFrom:
        secretKeyRef: {name: {{ $secret }}, key: {{ $root.Values.sensor.existingSecretKeys.hmacKey }}}
    - name: DLP_SENSOR_CACHE
      value: /var/cache/dlp-sensor
    {{- with $root.Values.kafka.bootstrap }}
    - name: DLP_KAFKA_BOOTSTRAP
      value: {{ . | quote }}
    {{- end }}
    {{- range (include "dlp-sensor.credentials" $root | fromJson).items }}
    - name: {{ .env }}
      valueFrom:
        secretKeyRef: {name: {{ .secret }}, key: {{ .key }}}
    {{- end }}
    {{- range $i, $x := ($root.Values.edm | default dict).indexes }}
    {{- with $x.keySecret }}
    - name: DLP_EDM_{{ $i }}_KEY
      valueFrom:
        secretKeyRef: {name: {{ .name }}, key: {{ .key }}}
    {{- end }}
    {{- end }}
    {{- with .env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- with $root.Values.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    {{- with .ports }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    - {name: dlp-metrics, containerPort: {{ $root.Values.sensor.ports.metrics }}, protocol: TCP}
  # /healthz: the process answers. /readyz: signatures loaded, state open and, for the proxy, the app
  # behind it accepts connections (a sidecar whose app is down leaves the Service's endpoints).
  startupProbe:
    httpGet: {path: /healthz, port: dlp-metrics}
    periodSeconds: 2
    failureThreshold: 60
  livenessProbe:
    httpGet: {path: /healthz, port: dlp-metrics}
    periodSeconds: 10
    timeoutSeconds: 2
    failureThreshold: 3
  readinessProbe:
    httpGet: {path: /readyz, port: dlp-metrics}
    periodSeconds: 5
    timeoutSeconds: 2
  resources:
    {{- toYaml $root.Values.sensor.resources | nindent 4 }}
  securityContext:
    {{- toYaml $root.Values.securityContext | nindent 4 }}
  volumeMounts:
    - {name: dlp-config, mountPath: /etc/dlp-sensor, readOnly: true}
    - {name: dlp-state, mountPath: /var/lib/dlp-sensor}
    - {name: dlp-cache, mountPath: /var/cache/dlp-sensor}
    - {name: dlp-tmp, mountPath: /tmp}
    {{- range $i, $x := ($root.Values.edm | default dict).indexes }}
    - {name: dlp-edm-{{ $i }}, mountPath: /etc/dlp-sensor-edm/{{ $x.name }}, readOnly: true}
    {{- end }}
    {{- with $root.Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/*
The proxy sidecar for a pod's initContainers (a Kubernetes native sidecar, k8s >= 1.29): it starts
before the app, stays up for the pod's life and stops after it. Clients reach it on the port named
`dlp-http`; it forwards to the app on 127.0.0.1:sidecar.app.port. Takes the chart context.
*/}}
{{- define "dlp-sensor.sidecarContainer" -}}
{{- $c := include "dlp-sensor.proxyContainer" . | fromYamlArray | first -}}
{{- $_ := set $c "restartPolicy" "Always" -}}
{{- toYaml (list $c) -}}
{{- end -}}

{{/* The proxy sidecar as a regular container (sidecar.native: false, clusters before 1.29). */}}
{{- define "dlp-sensor.proxyContainer" -}}
{{- include "dlp-sensor.container" (dict "root" . "args" (list "proxy" "--config" "/etc/dlp-sensor/sensor.yaml") "ports" (list (dict "name" "dlp-http" "containerPort" .Values.sensor.ports.proxy "protocol" "TCP"))) -}}
{{- end -}}

{{/* The pod volumes the sensor container mounts, plus extraVolumes. Takes the chart context. */}}
{{- define "dlp-sensor.volumes" -}}
- name: dlp-config
  configMap: {name: {{ include "dlp-sensor.fullname" . }}-config}
- name: dlp-state
{{- if .Values.sensor.state.existingClaim }}
  persistentVolumeClaim: {claimName: {{ .Values.sensor.state.existingClaim }}}
{{- else }}
  emptyDir: {}
{{- end }}
- name: dlp-cache
  emptyDir: {sizeLimit: 256Mi}
- name: dlp-tmp
  emptyDir: {sizeLimit: 1Gi}
{{- include "dlp-sensor.edmVolumes" . }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* A HorizontalPodAutoscaler for one Deployment, when its autoscaling is enabled (a YAML document). */}}
{{- define "dlp-sensor.hpa" -}}
{{- if .autoscaling.enabled }}
{{- if lt (int .autoscaling.maxReplicas) (int .autoscaling.minReplicas) }}
{{- fail (printf "%s.autoscaling.maxReplicas (%v) is below minReplicas (%v)" .component .autoscaling.maxReplicas .autoscaling.minReplicas) }}
{{- end }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ .name }}
  labels:
    {{- include "dlp-sensor.labels" .root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: {{ .name }}}
  minReplicas: {{ .autoscaling.minReplicas }}
  maxReplicas: {{ .autoscaling.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target: {type: Utilization, averageUtilization: {{ .autoscaling.targetCPUUtilizationPercentage }}}
{{- end }}
{{- end -}}
