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

{{/* selector labels for one component: sidecar | icap | extproc | worker */}}
{{- define "dlp-sensor.selector" -}}
app.kubernetes.io/name: {{ include "dlp-sensor.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "dlp-sensor.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "dlp-sensor.secretName" -}}
{{- default (printf "%s-secret" (include "dlp-sensor.fullname" .)) .Values.sensor.existingSecret -}}
{{- end -}}

{{/* The sensor container, shared by the sidecar and the standalone deployments. */}}
{{- define "dlp-sensor.container" -}}
{{- $root := .root -}}
- name: dlp-sensor
  image: {{ include "dlp-sensor.image" $root }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  args:
{{ toYaml .args | indent 4 }}
  env:
    - name: DLP_SENSOR_ADMIN_TOKEN
      valueFrom:
        secretKeyRef: {name: {{ include "dlp-sensor.secretName" $root }}, key: admin-token}
    - name: DLP_SENSOR_HMAC_KEY
      valueFrom:
        secretKeyRef: {name: {{ include "dlp-sensor.secretName" $root }}, key: hmac-key}
    - name: DLP_SENSOR_CACHE
      value: /var/cache/dlp-sensor
    {{- with $root.Values.kafka.bootstrap }}
    - name: DLP_KAFKA_BOOTSTRAP
      value: {{ . | quote }}
    {{- end }}
    {{- with $root.Values.kafka.existingSecret }}
    - name: DLP_KAFKA_SASL_USERNAME
      valueFrom:
        secretKeyRef: {name: {{ . }}, key: username}
    - name: DLP_KAFKA_SASL_PASSWORD
      valueFrom:
        secretKeyRef: {name: {{ . }}, key: password}
    {{- end }}
    {{- with .env }}
{{ toYaml . | indent 4 }}
    {{- end }}
  ports:
    {{- with .ports }}
{{ toYaml . | indent 4 }}
    {{- end }}
    - {name: metrics, containerPort: {{ $root.Values.sensor.ports.metrics }}, protocol: TCP}
  livenessProbe:
    httpGet: {path: /healthz, port: metrics}
    periodSeconds: 10
    timeoutSeconds: 2
    failureThreshold: 3
  readinessProbe:
    httpGet: {path: /readyz, port: metrics}
    periodSeconds: 5
    timeoutSeconds: 2
  startupProbe:
    httpGet: {path: /healthz, port: metrics}
    periodSeconds: 2
    failureThreshold: 60
  resources:
{{ toYaml $root.Values.sensor.resources | indent 4 }}
  securityContext:
{{ toYaml $root.Values.securityContext | indent 4 }}
  volumeMounts:
    - {name: dlp-config, mountPath: /etc/dlp-sensor, readOnly: true}
    - {name: dlp-state, mountPath: /var/lib/dlp-sensor}
    - {name: dlp-cache, mountPath: /var/cache/dlp-sensor}
    - {name: dlp-tmp, mountPath: /tmp}
{{- end -}}

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
{{- end -}}
