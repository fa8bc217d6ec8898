{{- define "switchyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "switchyard.fullname" -}}
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

{{- define "switchyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "switchyard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "switchyard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The ServiceAccount the pod runs as: only with discovery is one needed. */}}
{{- define "switchyard.serviceAccountName" -}}
{{- if and .Values.discovery.enabled .Values.serviceAccount.create -}}
{{- default (include "switchyard.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Whether the admin listener has a key (and so leaves loopback). */}}
{{- define "switchyard.adminKeyed" -}}
{{- if or .Values.admin.apiKey .Values.admin.existingSecret -}}true{{- end -}}
{{- end -}}

{{/* Whether the chart's own Secret is needed. */}}
{{- define "switchyard.ownSecret" -}}
{{- if or (and .Values.admin.apiKey (not .Values.admin.existingSecret)) (and .Values.database.url (not .Values.database.existingSecret)) (and .Values.redis.url (not .Values.redis.existingSecret)) -}}true{{- end -}}
{{- end -}}

{{/* The gateway's config file: what the values derive, under .Values.config. */}}
{{- define "switchyard.config" -}}
{{- $c := dict
  "host" "0.0.0.0"
  "port" .Values.ports.http
  "prometheus_host" "0.0.0.0"
  "prometheus_port" .Values.ports.metrics
  "admin_host" (ternary "0.0.0.0" "127.0.0.1" (eq (include "switchyard.adminKeyed" .) "true"))
  "admin_port" .Values.admin.port
  "policy" .Values.policy
  "shutdown_grace_period_secs" .Values.shutdownGracePeriodSecs
  "log_json" .Values.logJson
-}}
{{- if .Values.workers -}}
{{- $_ := set $c "worker_urls" .Values.workers -}}
{{- end -}}
{{- if .Values.discovery.enabled -}}
{{- $_ := set $c "service_discovery" true -}}
{{- $_ := set $c "selector" .Values.discovery.selector -}}
{{- $_ := set $c "service_discovery_namespace" (default .Release.Namespace .Values.discovery.namespace) -}}
{{- $_ := set $c "service_discovery_port" .Values.discovery.port -}}
{{- $_ := set $c "service_discovery_relist_secs" .Values.discovery.relistSecs -}}
{{- end -}}
{{- if gt (int (include "switchyard.replicasMax" .)) 1 -}}
{{- $_ := set $c "rate_limit_replicas" (int (include "switchyard.replicasMax" .)) -}}
{{- end -}}
{{- toYaml (mergeOverwrite $c (deepCopy .Values.config)) -}}
{{- end -}}

{{/* The most replicas there may be (for --rate-limit-replicas). */}}
{{- define "switchyard.replicasMax" -}}
{{- if .Values.autoscaling.enabled -}}{{ .Values.autoscaling.maxReplicas }}{{- else -}}{{ .Values.replicaCount }}{{- end -}}
{{- end -}}

{{/* The container's environment: the secrets the gateway reads, and extraEnv. */}}
{{- define "switchyard.env" -}}
{{- if include "switchyard.adminKeyed" . }}
- name: SWITCHYARD_ADMIN_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.admin.existingSecret | default (include "switchyard.fullname" .) }}
      key: {{ .Values.admin.existingSecretKey }}
{{- end }}
{{- if .Values.database.url | or .Values.database.existingSecret }}
- name: SWITCHYARD_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret | default (include "switchyard.fullname" .) }}
      key: {{ .Values.database.existingSecretKey }}
{{- end }}
{{- if .Values.redis.url | or .Values.redis.existingSecret }}
- name: SWITCHYARD_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret | default (include "switchyard.fullname" .) }}
      key: {{ .Values.redis.existingSecretKey }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}
