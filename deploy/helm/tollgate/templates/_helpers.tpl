{{/* Names */}}
{{- define "tollgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tollgate.fullname" -}}
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

{{- define "tollgate.controlPlane.fullname" -}}
{{- printf "%s-controlplane" (include "tollgate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tollgate.proxy.fullname" -}}
{{- printf "%s-proxy" (include "tollgate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tollgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tollgate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tollgate.configMapName" -}}
{{- if .Values.config.create -}}
{{- printf "%s-config" (include "tollgate.fullname" .) -}}
{{- else -}}
{{- required "config.existingConfigMap is required when config.create=false" .Values.config.existingConfigMap -}}
{{- end -}}
{{- end -}}

{{/* Labels */}}
{{- define "tollgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "tollgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "tollgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tollgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tollgate.controlPlane.selectorLabels" -}}
{{ include "tollgate.selectorLabels" . }}
app.kubernetes.io/component: controlplane
{{- end -}}

{{- define "tollgate.proxy.selectorLabels" -}}
{{ include "tollgate.selectorLabels" . }}
app.kubernetes.io/component: proxy
{{- end -}}

{{/* Images */}}
{{- define "tollgate.controlPlane.image" -}}
{{- printf "%s:%s" .Values.controlPlane.image.repository (default .Chart.AppVersion .Values.controlPlane.image.tag) -}}
{{- end -}}

{{- define "tollgate.proxy.image" -}}
{{- printf "%s:%s" .Values.proxy.image.repository (default .Chart.AppVersion .Values.proxy.image.tag) -}}
{{- end -}}

{{/* secretKeyRef env vars. With secrets.createDevSecret every reference points at the dev Secret. */}}
{{- define "tollgate.devSecretName" -}}
{{- printf "%s-dev" (include "tollgate.fullname" .) -}}
{{- end -}}

{{- define "tollgate.env.masterKey" -}}
- name: TOLLGATE_MASTER_KEY
  valueFrom:
    secretKeyRef:
      {{- if .Values.secrets.createDevSecret }}
      name: {{ include "tollgate.devSecretName" . }}
      key: master-key
      {{- else }}
      name: {{ required "secrets.masterKey.existingSecret is required" .Values.secrets.masterKey.existingSecret }}
      key: {{ required "secrets.masterKey.key is required" .Values.secrets.masterKey.key }}
      {{- end }}
{{- end -}}

{{- define "tollgate.env.syncToken" -}}
- name: TOLLGATE_SYNC_TOKEN
  valueFrom:
    secretKeyRef:
      {{- if .Values.secrets.createDevSecret }}
      name: {{ include "tollgate.devSecretName" . }}
      key: sync-token
      {{- else }}
      name: {{ required "secrets.syncToken.existingSecret is required" .Values.secrets.syncToken.existingSecret }}
      key: {{ required "secrets.syncToken.key is required" .Values.secrets.syncToken.key }}
      {{- end }}
{{- end -}}

{{- define "tollgate.env.databaseUrl" -}}
{{- if .Values.database.enabled -}}
- name: TOLLGATE_DATABASE_URL
  valueFrom:
    secretKeyRef:
      {{- if .Values.secrets.createDevSecret }}
      name: {{ include "tollgate.devSecretName" . }}
      key: database-url
      {{- else }}
      name: {{ required "database.existingSecret is required when database.enabled" .Values.database.existingSecret }}
      key: {{ required "database.key is required" .Values.database.key }}
      {{- end }}
{{- end -}}
{{- end -}}

{{/* Checks that make an invalid combination fail at template time. */}}
{{- define "tollgate.validate" -}}
{{- if and (not .Values.database.enabled) (gt (int .Values.controlPlane.replicaCount) 1) -}}
{{- fail "controlPlane.replicaCount > 1 needs Postgres (database.enabled=true): the embedded store serves a single replica" -}}
{{- end -}}
{{- if and .Values.proxy.podDisruptionBudget.enabled (ne (toString .Values.proxy.podDisruptionBudget.minAvailable) "") (ne (toString .Values.proxy.podDisruptionBudget.maxUnavailable) "") -}}
{{- fail "proxy.podDisruptionBudget: set minAvailable or maxUnavailable, not both" -}}
{{- end -}}
{{- if lt (int .Values.proxy.terminationGracePeriodSeconds) (add (int .Values.proxy.preStopSleepSeconds) 35) -}}
{{- fail "proxy.terminationGracePeriodSeconds must cover preStopSleepSeconds + 35 s (25 s HTTP drain + 10 s spend-outbox shipping)" -}}
{{- end -}}
{{- end -}}

{{/* Pod-level scheduling bits shared by both Deployments: pass (dict "v" .Values.x "sel" labels). */}}
{{- define "tollgate.scheduling" -}}
{{- with .v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
topologySpreadConstraints:
{{- if .v.topologySpreadConstraints }}
  {{- toYaml .v.topologySpreadConstraints | nindent 2 }}
{{- else }}
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- .sel | nindent 8 }}
{{- end }}
{{- end -}}
