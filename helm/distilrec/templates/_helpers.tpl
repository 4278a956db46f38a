{{/* Names, labels and the pieces every Ray pod shares. Every helper is prefixed "distilrec.". */}}

{{- define "distilrec.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-distilrec, or the release name when it already contains the chart name.
     Kept to 40 characters: KubeRay appends suffixes (-raycluster-xxxxx, -head-svc) to it. */}}
{{- define "distilrec.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "distilrec.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "distilrec.selectorLabels" -}}
app.kubernetes.io/name: {{ include "distilrec.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "distilrec.labels" -}}
helm.sh/chart: {{ include "distilrec.chart" . }}
{{ include "distilrec.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: distilrec
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of a component's resources and pods: (dict "ctx" $ "component" "serve") */}}
{{- define "distilrec.componentLabels" -}}
{{ include "distilrec.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "distilrec.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "distilrec.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference: repository@digest when a digest is given (the tag is then ignored), else
     repository:tag. (dict "repository" R "tag" T "digest" D) */}}
{{- define "distilrec.imageRef" -}}
{{- if .digest }}
{{- printf "%s@%s" .repository .digest }}
{{- else }}
{{- printf "%s:%s" .repository .tag }}
{{- end }}
{{- end }}

{{- define "distilrec.image" -}}
{{- include "distilrec.imageRef" (dict "repository" .Values.image.repository "tag" (default .Chart.AppVersion .Values.image.tag) "digest" .Values.image.digest) }}
{{- end }}

{{- define "distilrec.gpuImage" -}}
{{- $tag := default (printf "%s-gpu" (default .Chart.AppVersion .Values.image.tag)) .Values.image.gpuTag }}
{{- include "distilrec.imageRef" (dict "repository" .Values.image.repository "tag" $tag "digest" .Values.image.gpuDigest) }}
{{- end }}

{{- define "distilrec.redisImage" -}}
{{- include "distilrec.imageRef" (dict "repository" .Values.redis.image.repository "tag" .Values.redis.image.tag "digest" .Values.redis.image.digest) }}
{{- end }}

{{/* "true" when the Prometheus Operator resources (PodMonitors, PrometheusRule) are rendered: the cluster
     serves monitoring.coreos.com/v1 (helm template: --api-versions monitoring.coreos.com/v1), or
     monitoring.forceOperatorResources says to render them anyway; "" otherwise. */}}
{{- define "distilrec.operatorApi" -}}
{{- if or .Values.monitoring.forceOperatorResources (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") -}}
true
{{- end }}
{{- end }}

{{/* The disruption limits of a PodDisruptionBudget spec from a podDisruptionBudget values block:
     minAvailable when given, else maxUnavailable. */}}
{{- define "distilrec.pdbLimits" -}}
{{- if not (eq (toString .minAvailable) "") }}
minAvailable: {{ .minAvailable }}
{{- else }}
maxUnavailable: {{ .maxUnavailable }}
{{- end }}
{{- /* Pods that are not ready may always be evicted: a crash-looping pod never blocks a node drain. */}}
unhealthyPodEvictionPolicy: AlwaysAllow
{{- end }}

{{- define "distilrec.adminSecretName" -}}
{{- default (printf "%s-admin" (include "distilrec.fullname" .)) .Values.adminToken.existingSecret }}
{{- end }}

{{- define "distilrec.redisFullname" -}}
{{- printf "%s-redis" (include "distilrec.fullname" .) }}
{{- end }}

{{- define "distilrec.redisSecretName" -}}
{{- default (include "distilrec.redisFullname" .) .Values.redis.auth.existingSecret }}
{{- end }}

{{- define "distilrec.artifactClaimName" -}}
{{- default (printf "%s-artifacts" (include "distilrec.fullname" .)) .Values.artifacts.pvc.existingClaim }}
{{- end }}

{{/* The pipeline output URI: where training writes and what the service loads (model_uri). */}}
{{- define "distilrec.artifactUri" -}}
{{- if eq .Values.artifacts.type "pvc" }}
{{- printf "%s/%s" (.Values.artifacts.pvc.mountPath | trimSuffix "/") (.Values.artifacts.pvc.path | trimPrefix "/") | trimSuffix "/" }}
{{- else }}
{{- required "artifacts.objectStore.uri is required when artifacts.type is objectStore (e.g. s3://bucket/distilrec)" .Values.artifacts.objectStore.uri }}
{{- end }}
{{- end }}

{{/* The event store URL given to the Serve app (no password in it: DISTILREC_REDIS_PASSWORD carries it). */}}
{{- define "distilrec.eventStoreUrl" -}}
{{- if .Values.eventStore.url }}
{{- .Values.eventStore.url }}
{{- else if .Values.redis.enabled }}
{{- printf "redis://%s:6379/0" (include "distilrec.redisFullname" .) }}
{{- else }}
{{- fail "eventStore.url is empty and redis.enabled is false: set eventStore.url (redis://host:6379/0) or enable the in-chart Redis" }}
{{- end }}
{{- end }}

{{/* The Redis password Secret (name and key) the service reads, or nothing. */}}
{{- define "distilrec.redisPasswordRef" -}}
{{- if .Values.eventStore.url }}
{{- if .Values.eventStore.passwordSecret.name }}
{{- dict "name" .Values.eventStore.passwordSecret.name "key" .Values.eventStore.passwordSecret.key | toJson }}
{{- end }}
{{- else if .Values.redis.enabled }}
{{- dict "name" (include "distilrec.redisSecretName" .) "key" .Values.redis.auth.key | toJson }}
{{- end }}
{{- end }}

{{/* A random secret value that survives upgrades: the existing Secret's value when there is one.
     (dict "ctx" $ "name" NAME "key" KEY) */}}
{{- define "distilrec.persistentSecret" -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .name }}
{{- if and $existing (hasKey $existing.data .key) }}
{{- index $existing.data .key }}
{{- else }}
{{- randAlphaNum 40 | b64enc }}
{{- end }}
{{- end }}

{{/* The serveConfigV2 document: services/serve_config.yaml (files/serve_config.yaml is a symlink to it, so
     local runs and the cluster share one source), with the chart's args and per-deployment overrides.
     Each option given for a deployment replaces the file's option, as services/run.py:load_config does.
     serve.config.scorer is the app arg `scorer`; with "deployment" the application also builds the Scorer
     deployment, whose entry (not in the file: Serve refuses options for a deployment the application
     does not build) comes from serve.config.scorerDeployment, then serve.config.deployments.Scorer. */}}
{{- define "distilrec.scorerDeployment" -}}
{{- $s := .Values.serve.config.scorerDeployment }}
{{- if gt (int $s.minReplicas) (int $s.maxReplicas) }}
{{- fail (printf "serve.config.scorerDeployment: minReplicas (%v) is above maxReplicas (%v)" $s.minReplicas $s.maxReplicas) }}
{{- end }}
{{- $actor := dict "num_cpus" $s.numCpus }}
{{- if $s.numGpus }}
{{- $_ := set $actor "num_gpus" $s.numGpus }}
{{- end }}
{{- /* upscale/downscale delays as services/scorer.py's decorator: an autoscaling_config given here replaces
       the decorator's whole. */}}
{{- dict "name" "Scorer" "health_check_period_s" 2
      "autoscaling_config" (dict "min_replicas" $s.minReplicas "max_replicas" $s.maxReplicas
                                 "target_ongoing_requests" $s.targetOngoingRequests
                                 "upscale_delay_s" 10 "downscale_delay_s" 120)
      "max_ongoing_requests" $s.maxOngoingRequests
      "ray_actor_options" $actor
      "user_config" (dict "max_batch_size" $s.maxBatchSize "batch_wait_timeout_s" $s.batchWaitTimeoutS)
    | toJson }}
{{- end }}

{{- define "distilrec.serveConfig" -}}
{{- $cfg := .Files.Get "files/serve_config.yaml" | fromYaml }}
{{- if or (not $cfg) (hasKey $cfg "Error") }}
{{- fail "files/serve_config.yaml is missing or not valid YAML: it must be a symlink to services/serve_config.yaml" }}
{{- end }}
{{- $overrides := .Values.serve.config.deployments }}
{{- $scorer := .Values.serve.config.scorer }}
{{- $known := list }}
{{- range $app := $cfg.applications }}
{{- $args := default dict $app.args }}
{{- $_ := set $args "model_uri" (include "distilrec.artifactUri" $) }}
{{- $_ := set $args "event_store" (include "distilrec.eventStoreUrl" $) }}
{{- $_ := set $args "model_poll_s" $.Values.serve.config.modelPollSeconds }}
{{- $_ := set $args "scorer" $scorer }}
{{- range $k, $v := $.Values.serve.config.args }}
{{- $_ := set $args $k $v }}
{{- end }}
{{- $_ := set $app "args" $args }}
{{- $deps := $app.deployments }}
{{- if eq $scorer "deployment" }}
{{- $deps = append $deps (include "distilrec.scorerDeployment" $ | fromJson) }}
{{- end }}
{{- range $dep := $deps }}
{{- $known = append $known $dep.name }}
{{- $o := get $overrides $dep.name | default dict }}
{{- /* a fixed replica count and autoscaling exclude each other: the one given replaces the other */}}
{{- if hasKey $o "num_replicas" }}{{- $_ := unset $dep "autoscaling_config" }}{{- end }}
{{- if hasKey $o "autoscaling_config" }}{{- $_ := unset $dep "num_replicas" }}{{- end }}
{{- $policy := dig "autoscaling_config" "policy" nil $dep }}
{{- range $k, $v := $o }}
{{- $_ := set $dep $k (deepCopy $v) }}
{{- end }}
{{- /* an autoscaling_config given without a policy keeps the file's (services.run.keep_autoscaling_policy) */}}
{{- if and $policy (kindIs "map" $dep.autoscaling_config) (not (hasKey $dep.autoscaling_config "policy")) }}
{{- $_ := set $dep.autoscaling_config "policy" $policy }}
{{- end }}
{{- end }}
{{- $_ := set $app "deployments" $deps }}
{{- end }}
{{- range $name, $_ := $overrides }}
{{- if not (has $name $known) }}
{{- if eq $name "Scorer" }}
{{- fail "serve.config.deployments.Scorer: the application has a Scorer deployment only with serve.config.scorer=deployment (it is inline)" }}
{{- end }}
{{- fail (printf "serve.config.deployments.%s: no such deployment in services/serve_config.yaml (known: %s)" $name (join ", " $known)) }}
{{- end }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* Volumes every Ray pod mounts: writable /tmp (Ray's session dir; the root filesystem is read-only),
     /dev/shm for the object store, and the artifact PVC. */}}
{{- define "distilrec.rayVolumes" -}}
- name: tmp
  emptyDir:
    {{- with .Values.ray.tmpSizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
- name: dshm
  emptyDir:
    medium: Memory
    {{- with .Values.ray.shmSizeLimit }}
    sizeLimit: {{ . }}
    {{- end }}
{{- if eq .Values.artifacts.type "pvc" }}
- name: artifacts
  persistentVolumeClaim:
    claimName: {{ include "distilrec.artifactClaimName" . }}
{{- end }}
{{- end }}

{{- define "distilrec.rayVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: dshm
  mountPath: /dev/shm
{{- if eq .Values.artifacts.type "pvc" }}
- name: artifacts
  mountPath: {{ .Values.artifacts.pvc.mountPath }}
{{- end }}
{{- end }}

{{/* Environment of every Ray container: caches under /tmp, object-store credentials. */}}
{{- define "distilrec.rayEnv" -}}
- name: XDG_CACHE_HOME
  value: /tmp/cache
- name: MPLCONFIGDIR
  value: /tmp/matplotlib
- name: HF_HOME
  value: /tmp/huggingface
{{- if eq .Values.ray.authMode "disabled" }}
{{- /* Explicit, so that no Ray process turns token auth on by itself (KubeRay sets it for "token"). */}}
- name: RAY_AUTH_MODE
  value: disabled
{{- end }}
{{- if eq .Values.artifacts.type "objectStore" }}
{{- with .Values.artifacts.objectStore.region }}
- name: AWS_DEFAULT_REGION
  value: {{ . | quote }}
{{- end }}
{{- with .Values.artifacts.objectStore.endpointUrl }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- with .Values.ray.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "distilrec.rayEnvFrom" -}}
{{- if and (eq .Values.artifacts.type "objectStore") .Values.artifacts.objectStore.existingSecret }}
envFrom:
  - secretRef:
      name: {{ .Values.artifacts.objectStore.existingSecret }}
{{- end }}
{{- end }}

{{/* Environment of the serving containers: Ray Serve's request path (serve.requestPath; the same variables as
services/run.py:serve_env), where the admin token file is (services/security.py), the Redis password from
a Secret. */}}
{{- define "distilrec.serveEnv" -}}
{{- $path := .Values.serve.requestPath }}
{{- if ne $path "ray-default" }}
- name: RAY_SERVE_THROUGHPUT_OPTIMIZED
  value: "1"
{{- if eq $path "fast" }}
- name: RAY_SERVE_ENABLE_HA_PROXY
  value: "1"
{{- else }}
{{- /* without HAProxy, direct ingress stays off so that Serve's own proxy takes HTTP */}}
- name: RAY_SERVE_ENABLE_DIRECT_INGRESS
  value: "0"
{{- end }}
- name: DISTILREC_FREEZE_HEAP
  value: "1"
{{- end }}
- name: DISTILREC_ADMIN_TOKEN_FILE
  value: {{ include "distilrec.adminTokenFile" . }}
{{- with (include "distilrec.redisPasswordRef" .) }}
{{- $ref := fromJson . }}
- name: DISTILREC_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $ref.name }}
      key: {{ $ref.key }}
{{- end }}
{{- end }}

{{/* The admin token inside the serving containers: the admin Secret's key, mounted read-only. */}}
{{- define "distilrec.adminTokenDir" -}}
/etc/distilrec/admin
{{- end }}

{{- define "distilrec.adminTokenFile" -}}
{{- printf "%s/token" (include "distilrec.adminTokenDir" .) }}
{{- end }}

{{- define "distilrec.containerSecurityContext" -}}
{{- toYaml .Values.securityContext }}
{{- end }}

{{/* One Ray container's ports: (dict "head" true|false) */}}
{{- define "distilrec.rayPorts" -}}
{{- if .head -}}
- {containerPort: 6379, name: gcs-server}
- {containerPort: 8265, name: dashboard}
- {containerPort: 10001, name: client}
- {containerPort: 44227, name: dash-metrics}
{{- if .autoscaler }}
- {containerPort: 44217, name: as-metrics}
{{- end }}
{{- end }}
- {containerPort: 8080, name: metrics}
{{- if .serve }}
- {containerPort: 8000, name: serve}
{{- end }}
{{- end }}

{{/* The PromQL selector that scopes the alerts to this release's pods (labels the PodMonitors add). */}}
{{- define "distilrec.alertSelector" -}}
namespace="{{ .Release.Namespace }}",app_kubernetes_io_instance="{{ .Release.Name }}"
{{- end }}

{{/* A Ray pod template (head or worker) shared by the RayService and the training RayJobs.
     (dict "ctx" $ "component" "serve|training" "role" "head|worker" "group" VALUES-OF-THE-GROUP
           "image" IMAGE "gpus" N "serve" BOOL "initContainers" LIST "extraVolumes" LIST "extraMounts" LIST) */}}
{{- define "distilrec.rayPodTemplate" -}}
{{- $ctx := .ctx }}
{{- $v := $ctx.Values }}
{{- $g := .group -}}
metadata:
  labels:
    {{- include "distilrec.componentLabels" (dict "ctx" $ctx "component" .component) | nindent 4 }}
spec:
  serviceAccountName: {{ include "distilrec.serviceAccountName" $ctx }}
  {{- /* Only a head with KubeRay's in-tree autoscaler sidecar needs an API token. */}}
  automountServiceAccountToken: {{ and (eq .role "head") (default false .autoscaler) }}
  securityContext:
    {{- toYaml $v.podSecurityContext | nindent 4 }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .initContainers }}
  initContainers:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ ternary "ray-head" "ray-worker" (eq .role "head") }}
      image: {{ .image }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      securityContext:
        {{- include "distilrec.containerSecurityContext" $ctx | nindent 8 }}
      ports:
        {{- include "distilrec.rayPorts" (dict "head" (eq .role "head") "serve" .serve "autoscaler" (and .serve $v.serve.autoscaling.enabled)) | trim | nindent 8 }}
      env:
        {{- include "distilrec.rayEnv" $ctx | trim | nindent 8 }}
        {{- if .serve }}
        {{- include "distilrec.serveEnv" $ctx | trim | nindent 8 }}
        {{- end }}
      {{- with (include "distilrec.rayEnvFrom" $ctx) }}
      {{- . | trim | nindent 6 }}
      {{- end }}
      resources:
        {{- $res := deepCopy $g.resources }}
        {{- if .gpus }}
        {{- $_ := set $res "limits" (merge (dict "nvidia.com/gpu" .gpus) (default dict $res.limits)) }}
        {{- $_ := set $res "requests" (merge (dict "nvidia.com/gpu" .gpus) (default dict $res.requests)) }}
        {{- end }}
        {{- toYaml $res | nindent 8 }}
      volumeMounts:
        {{- include "distilrec.rayVolumeMounts" $ctx | nindent 8 }}
        {{- if .serve }}
        - name: admin-token
          mountPath: {{ include "distilrec.adminTokenDir" $ctx }}
          readOnly: true
        {{- end }}
        {{- with .extraMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    {{- include "distilrec.rayVolumes" $ctx | nindent 4 }}
    {{- if .serve }}
    - name: admin-token
      secret:
        secretName: {{ include "distilrec.adminSecretName" $ctx }}
        items:
          - {key: {{ $v.adminToken.key }}, path: token}
        defaultMode: 0444
    {{- end }}
    {{- with .extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $g.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $g.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $g.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* authOptions of every RayCluster. */}}
{{- define "distilrec.authOptions" -}}
authOptions:
  mode: {{ .Values.ray.authMode }}
{{- end }}

{{/* The pipeline config, with use_gpu set for GPU training. */}}
{{- define "distilrec.pipelineConfig" -}}
{{- $cfg := deepCopy .Values.training.config }}
{{- if .Values.training.gpu.enabled }}
{{- range $stage := list "teacher_train" "distill" }}
{{- $s := default dict (get $cfg $stage) }}
{{- if not (hasKey $s "use_gpu") }}
{{- $_ := set $s "use_gpu" true }}
{{- end }}
{{- $_ := set $cfg $stage $s }}
{{- end }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* The RayJob spec that trains and distils: used by the RayJob and the RayCronJob's jobTemplate. */}}
{{- define "distilrec.rayJobSpec" -}}
{{- $v := .Values }}
{{- $cfgVolume := list (dict "name" "pipeline-config" "configMap" (dict "name" (printf "%s-pipeline" (include "distilrec.fullname" .)))) }}
{{- $cfgMount := list (dict "name" "pipeline-config" "mountPath" "/etc/distilrec" "readOnly" true) }}
entrypoint: >-
  distilrec pipeline --dataset {{ $v.training.dataset | squote }}
  --output {{ include "distilrec.artifactUri" . | squote }}
  --config /etc/distilrec/pipeline.yaml
shutdownAfterJobFinishes: {{ $v.training.shutdownAfterJobFinishes }}
ttlSecondsAfterFinished: {{ $v.training.ttlSecondsAfterFinished }}
{{- if $v.training.activeDeadlineSeconds }}
activeDeadlineSeconds: {{ $v.training.activeDeadlineSeconds }}
{{- end }}
backoffLimit: {{ $v.training.backoffLimit }}
submissionMode: K8sJobMode
submitterPodTemplate:
  metadata:
    labels:
      {{- include "distilrec.componentLabels" (dict "ctx" . "component" "training-submitter") | nindent 6 }}
  spec:
    restartPolicy: Never
    serviceAccountName: {{ include "distilrec.serviceAccountName" . }}
    automountServiceAccountToken: false
    securityContext:
      {{- toYaml $v.podSecurityContext | nindent 6 }}
    {{- with $v.imagePullSecrets }}
    imagePullSecrets:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    containers:
      - name: ray-job-submitter
        image: {{ include "distilrec.image" . }}
        imagePullPolicy: {{ $v.image.pullPolicy }}
        securityContext:
          {{- include "distilrec.containerSecurityContext" . | nindent 10 }}
        env:
          - {name: XDG_CACHE_HOME, value: /tmp/cache}
        resources:
          {{- toYaml $v.training.submitterResources | nindent 10 }}
        volumeMounts:
          - {name: tmp, mountPath: /tmp}
    volumes:
      - name: tmp
        emptyDir: {}
rayClusterSpec:
  rayVersion: {{ $v.ray.version | quote }}
  {{- include "distilrec.authOptions" . | nindent 2 }}
  headGroupSpec:
    rayStartParams:
      num-cpus: "0"
      dashboard-host: "0.0.0.0"
    template:
      {{- include "distilrec.rayPodTemplate" (dict "ctx" . "component" "training" "role" "head" "group" $v.training.head "image" (include "distilrec.image" .) "extraVolumes" $cfgVolume "extraMounts" $cfgMount) | nindent 6 }}
  workerGroupSpecs:
    {{- if $v.training.gpu.enabled }}
    - groupName: gpu
      replicas: {{ $v.training.gpu.replicas }}
      minReplicas: {{ $v.training.gpu.replicas }}
      maxReplicas: {{ $v.training.gpu.replicas }}
      rayStartParams: {}
      template:
        {{- include "distilrec.rayPodTemplate" (dict "ctx" . "component" "training" "role" "worker" "group" $v.training.gpu "image" (include "distilrec.gpuImage" .) "gpus" $v.training.gpu.gpus "extraVolumes" $cfgVolume "extraMounts" $cfgMount) | nindent 8 }}
    {{- else }}
    - groupName: cpu
      replicas: {{ $v.training.workers.replicas }}
      minReplicas: {{ $v.training.workers.replicas }}
      maxReplicas: {{ $v.training.workers.replicas }}
      rayStartParams: {}
      template:
        {{- include "distilrec.rayPodTemplate" (dict "ctx" . "component" "training" "role" "worker" "group" $v.training.workers "image" (include "distilrec.image" .) "extraVolumes" $cfgVolume "extraMounts" $cfgMount) | nindent 8 }}
    {{- end }}
{{- end }}
