{{/* Names, as `helm create` makes them: <release>-onehop, or the release name when it has "onehop" in it. */}}
{{- define "onehop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "onehop.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "onehop.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "onehop.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* The DaemonSet, and the prefix of its pods' names. */}}
{{- define "onehop.agentName" -}}
{{- printf "%s-agent" (include "onehop.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "onehop.serviceAccountName" -}}
{{- default (include "onehop.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{- define "onehop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "onehop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end }}

{{- define "onehop.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "onehop.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "onehop.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
