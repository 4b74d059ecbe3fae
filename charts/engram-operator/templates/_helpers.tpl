{{- define "engram-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "engram-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "engram-operator.labels" -}}
app.kubernetes.io/name: {{ include "engram-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: engram
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "engram-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "engram-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The selector labels as k=v,k=v: what the operator puts in MemoryClusters' NetworkPolicies. */}}
{{- define "engram-operator.selectorString" -}}
{{- $pairs := list -}}
{{- range $key, $value := include "engram-operator.selectorLabels" . | fromYaml -}}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}

{{- define "engram-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "engram-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "engram-operator.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* What the operator does to the objects of a MemoryCluster; nothing more (least privilege). */}}
{{- define "engram-operator.namespacedRules" -}}
{{- /* MemoryClusters: created and deleted only for a MultiRegionCluster's regions, whose spec it
     patches when its template changes. */}}
- apiGroups: [engram.io]
  resources: [memoryclusters]
  verbs: [get, list, watch, patch, create, delete]
- apiGroups: [engram.io]
  resources: [memoryclusters/status]
  verbs: [get, patch]
{{- /* Children name the MemoryCluster as owner with blockOwnerDeletion: true, which the API server
     admits only from a client that may update the owner's finalizers (OwnerReferencesPermissionEnforcement). */}}
- apiGroups: [engram.io]
  resources: [memoryclusters/finalizers]
  verbs: [update]
- apiGroups: [engram.io]
  resources: [multiregionclusters]
  verbs: [get, list, watch, patch]
- apiGroups: [engram.io]
  resources: [multiregionclusters/status]
  verbs: [get, patch]
{{- /* A region's MemoryCluster in the MultiRegionCluster's own namespace names it as owner. */}}
- apiGroups: [engram.io]
  resources: [multiregionclusters/finalizers]
  verbs: [update]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, delete, patch]
- apiGroups: [""]
  resources: [services, configmaps]
  verbs: [get, list, watch, create]
- apiGroups: [apps]
  resources: [statefulsets]
  verbs: [get, list, watch, create]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create]
{{- /* Secrets: get reads the passwords spec.users names (by name, on every reconcile: no list or
     watch, so the operator never holds every Secret of a namespace); create and update write the
     users file into each cluster's NAME-users Secret. */}}
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create, update]
{{- /* Each cluster's NetworkPolicies: listed to compare, rewritten when spec.network changes, deleted
     when spec.network.policies is turned off; never watched. */}}
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [list, create, update, delete]
{{- if .Values.certManager.enabled }}
{{- /* spec.tls.issuerRef: each cluster's Certificates, listed by label to compare and created once;
     the garbage collector deletes them with the cluster, and cert-manager renews them. */}}
- apiGroups: [cert-manager.io]
  resources: [certificates]
  verbs: [list, create]
{{- end }}
{{- /* The provisioning Job; a failed one is deleted so that a new one retries. */}}
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
{{- if .Values.peering.enabled }}
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end -}}
