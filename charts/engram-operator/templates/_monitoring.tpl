{{/* The operator serves its metrics when asked to, and whenever a PodMonitor scrapes them. */}}
{{- define "engram-operator.metricsEnabled" -}}
{{- if or .Values.metrics.enabled .Values.monitoring.podMonitor.enabled -}}true{{- end -}}
{{- end -}}

{{/* Labels of the monitoring objects: the chart's, plus those the user's Prometheus selects on. */}}
{{- define "engram-operator.monitoringLabels" -}}
{{ include "engram-operator.labels" . }}
{{- with .Values.monitoring.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}
