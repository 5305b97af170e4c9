{{/* Chart name, truncated to a DNS label. */}}
{{- define "acceltrain.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-scoped name of the operator's objects. */}}
{{- define "acceltrain.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "acceltrain.selectorLabels" -}}
app.kubernetes.io/name: {{ include "acceltrain.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "acceltrain.labels" -}}
{{ include "acceltrain.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "acceltrain.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "acceltrain.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "acceltrain.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
The permissions the operator uses on the namespaces it watches, verb by verb (accel_operator.kube
and kopf): it reads each AccelTrainJob with GET, lists and watches jobs, pods and AccelTrainJobs,
applies children with server-side apply (patch, and create for the first apply), deletes
torn-down attempts (the Job, its ConfigMap and pods left behind when the Job is already gone)
and finished AccelTrainJobs past their TTL; it lists the scheduler's Events and posts its own.
It watches the jobs' Services and ConfigMaps (and GETs one it has not seen) to recreate those
of a live attempt when deleted. Services go with their job through the garbage collector. Children carry
blockOwnerDeletion, which clusters with OwnerReferencesPermissionEnforcement allow only to
those who may update the owner's finalizers.
*/}}
{{- define "acceltrain.namespacedRules" -}}
- apiGroups: ["acceltrain.io"]
  resources: ["acceltrainjobs"]
  verbs: ["get", "list", "watch", "patch", "delete"]
- apiGroups: ["acceltrain.io"]
  resources: ["acceltrainjobs/status"]
  verbs: ["patch"]
- apiGroups: ["acceltrain.io"]
  resources: ["acceltrainjobs/finalizers"]
  verbs: ["update"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "delete"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["list", "create"]
# Gang objects of the attempts (runPolicy.gangPolicy): native Workloads, Volcano and
# scheduler-plugins PodGroups; watched, and restored when deleted while their attempt runs.
- apiGroups: ["scheduling.k8s.io"]
  resources: ["workloads"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["scheduling.volcano.sh", "scheduling.x-k8s.io"]
  resources: ["podgroups"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Kueue's Workloads of queued attempts (watched where Kueue is installed): why Kueue has not
# admitted one yet, for the job's status.
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["list", "watch"]
{{- end -}}
