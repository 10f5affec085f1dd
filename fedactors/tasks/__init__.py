"""The built-in tasks: the paper's MNIST and Shakespeare models, LEAF's FEMNIST CNN, and small ones on data that
needs no download; and the MNIST CNN with batch normalization (for FedBN).

Importing this package imports neither torch nor any data: a model factory imports torch when
it is called, a loader reads its files when it is called.
"""

from fedactors.task import Task
from fedactors.tasks.digits import DIGITS_MLP
from fedactors.tasks.femnist import FEMNIST_CNN
from fedactors.tasks.mnist import MNIST_2NN, MNIST_CNN, MNIST_CNN_BN
from fedactors.tasks.shakespeare import CHAR_LM_TINY, SHAKESPEARE_LSTM

BUILTIN: dict[str, Task] = {t.name: t for t in (MNIST_CNN, MNIST_2NN, FEMNIST_CNN, DIGITS_MLP, SHAKESPEARE_LSTM,
                                                   CHAR_LM_TINY, MNIST_CNN_BN)}
