"""The Kubernetes edge shared by the webhook server and the controller: API clients and informers."""
