"""Weight clustering (weight sharing): at most ``num_clusters`` values per kernel, no wrapper layers.

    >>> model.fit(x, y, epochs=2, callbacks=[tfc.ClusteringCallback(num_clusters=16)])
    >>> tfc.clustering.clustering_report(model)      # distinct values per kernel
    >>> clustered = tfc.cluster_weights(model, 16)    # one-shot, then fine-tune yourself

See `tfcompress.clustering.cluster` for how the centroids train.
"""

from tfcompress.clustering.cluster import (
    INITS,
    ClusteringCallback,
    check_arguments,
    cluster_weights,
    clustering_report,
    kmeans_1d,
)

__all__ = ["ClusteringCallback", "cluster_weights", "clustering_report", "kmeans_1d", "check_arguments", "INITS"]
