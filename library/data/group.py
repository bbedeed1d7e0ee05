"""Several `[[datasets]]` as one sequence of batches (kohya's DatasetGroup + DataLoader(shuffle=True)).

The order of (dataset, batch) pairs is shuffled from `seed + epoch + 1` too (epoch from 0, see dataset.py), so
the whole group stays resumable."""
import random


class DatasetGroup:
    def __init__(self, datasets, seed=0):
        self.datasets = list(datasets)
        self.seed = int(seed) if seed is not None else 0
        self.epoch = 0
        self._order_cache = None

    def set_epoch(self, epoch):
        self.epoch = int(epoch)
        for dataset in self.datasets:
            dataset.set_epoch(epoch)

    def set_step(self, step):
        for dataset in self.datasets:
            dataset.set_step(step)

    def set_max_train_steps(self, max_train_steps):
        for dataset in self.datasets:
            dataset.set_max_train_steps(max_train_steps)

    def shard(self, rank, world):
        group = DatasetGroup([d.shard(rank, world) for d in self.datasets], self.seed)
        group.set_epoch(self.epoch)
        return group

    def _order(self):
        if self._order_cache is not None and self._order_cache[0] == self.epoch:
            return self._order_cache[1]
        order = [(d, i) for d, dataset in enumerate(self.datasets) for i in range(len(dataset))]
        if len(self.datasets) > 1:
            random.Random(self.seed + self.epoch + 1).shuffle(order)
        self._order_cache = (self.epoch, order)
        return order

    def __len__(self):
        return len(self._order())

    def __getitem__(self, index):
        if index < 0 or index >= len(self):
            raise IndexError(index)
        d, i = self._order()[index]
        return self.datasets[d][i]

    def locate(self, index):
        """(dataset, batch index inside it) for a group batch index."""
        d, i = self._order()[index]
        return self.datasets[d], i

    @property
    def num_train_images(self):
        return sum(d.num_train_images for d in self.datasets)

    @property
    def num_reg_images(self):
        return sum(d.num_reg_images for d in self.datasets)

    @property
    def items(self):
        return [item for d in self.datasets for item in d.items]
